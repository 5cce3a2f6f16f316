"""A registered source's identity: its registry entry and the digest of the files its rows are read from (what the
data stages' fingerprints and the incoming-data sensor compare)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.data.readers import source_files
from engine.store.content import ContentHasher


def source_files_under(path: Path, units: list[Path]) -> list[Path]:
    """Every file a source is read from: the files themselves, and every file inside a dataset folder."""
    files = []
    for unit in units:
        files += [unit] if unit.is_file() else sorted(p for p in unit.rglob("*") if p.is_file())
    return files


def source_identity(sources: dict, hasher: ContentHasher) -> dict[str, dict]:
    """What a set of registered sources' rows depend on: each registry entry and the digest of its files. A hub
    dataset that is no local directory is known by its id, subset, folder, split and revision: pin `revision` to
    make its content part of the fingerprint."""
    identity = {}
    for name, (entry, path) in sources.items():
        if entry.hub_key == "hf_hub_url" and not path.is_dir():
            digest = hashlib.sha256(json.dumps([entry.hf_hub_url, entry.subset, entry.folder, entry.split,
                                                entry.revision]).encode()).hexdigest()
        else:
            digest = hasher.tree(path, source_files_under(path, source_files(path, entry.allowed_roots)))
        identity[name] = {"entry": entry.model_dump(), "sha256": digest}
    return identity
