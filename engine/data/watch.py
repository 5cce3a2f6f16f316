"""Watching registered data for changes: content hashes per source, and whether changed files parse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.data.ingest import source_digest
from engine.data.readers import read_records, source_files
from engine.data.registry import DatasetEntry
from engine.errors import DataError


def snapshot(sources: dict[str, tuple[DatasetEntry, Path]]) -> dict[str, str]:
    """{source: content digest}: compared between sensor ticks, by content, never by modification time."""
    return {name: source_digest(entry, path) for name, (entry, path) in sources.items()}


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
