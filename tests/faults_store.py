"""The engine's own check of every artifact: files_intact (engine/store/digests.py)."""

from __future__ import annotations

import json

from engine.store.digests import FILES_INTACT, MANIFEST, problems
from tests.faults import Fault


def files_intact(artifact, recipe) -> tuple[bool, str]:
    """What the build and `tuneline verify` judge: every file the manifest lists, by size and sha256."""
    files = json.loads((artifact.path / MANIFEST).read_text())["files"]
    found = problems(artifact.path, files)
    return not found, "; ".join(found) or f"{len(files)} files as the manifest lists"


def overwrite_weights(artifact, recipe):
    """64 bytes of the adapter's weights overwritten, its size unchanged (what a bad disk or a stray write does)."""
    weights = next(p for p in sorted(artifact.path.rglob("*.safetensors")))
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\xff" * 64)
    return artifact, recipe


ENGINE_CHECKS = {FILES_INTACT: files_intact}
FAULTS = {("*", FILES_INTACT): Fault(overwrite_weights, r"\.safetensors: sha256 \w+…, expected \w+… \(same size\)")}
