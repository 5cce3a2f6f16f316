"""Watching registered data for changes: content hashes per source, and whether changed files parse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.data.sources import source_identity
from engine.store.content import ContentHasher
from engine.data.readers import read_records, source_files
from engine.data.registry import DatasetEntry, recipe_sources, resolve_sources
from engine.errors import DataError


def watched_sources(recipe) -> dict[str, tuple[DatasetEntry, Path]]:
    """Every source a recipe reads from outside: its datasets and its pt corpus."""
    data = recipe.data
    sources = recipe_sources(data)
    if recipe.pt.dataset:
        sources |= resolve_sources(data.dataset_dir, data.dataset_info, recipe.pt.dataset, data.allowed_roots)
    return sources


def snapshot(sources: dict[str, tuple[DatasetEntry, Path]], hasher: ContentHasher | None = None) -> dict[str, str]:
    """{source: content digest}: compared between sensor ticks, by content, never by modification time."""
    return {name: identity["sha256"] for name, identity in source_identity(sources, hasher or ContentHasher()).items()}


def changed_sources(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    return sorted(name for name, digest in current.items() if previous.get(name) != digest)


def unreadable_files(sources: dict[str, tuple[DatasetEntry, Path]], names: list[str]) -> list[str]:
    """A problem line per file of these sources that cannot be read at all (bad rows are quarantine's job)."""
    problems = []
    for name in names:
        entry, path = sources[name]
        if entry.hub_key:
            continue  # a hub dataset is checked when it loads
        try:
            files = source_files(path, entry.allowed_roots)
        except DataError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for file in files:
            try:
                for _ in read_records(file, entry.split):
                    pass
            except DataError as exc:
                problems.append(f"{name}: {exc}")
    return problems


def state_key(state: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
