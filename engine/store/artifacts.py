"""Artifacts: one directory per stage result, named by its fingerprint, published whole or not at all.

A stage is built in its work directory and renamed into `<asset>/<fingerprint>/` once its manifest is
written, so a reader never sees half an artifact, and the same fingerprint is a cache hit.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.store.digests import MANIFEST, check, file_digests

RECORDED_LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "llmcompressor",
                      "compressed-tensors", "duckdb", "dagster")


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries that did the work, for the lineage record (not the fingerprint)."""
    versions = {}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass(frozen=True)
class Artifact:
    """A finished artifact: where it lives, what made it, and what it measured."""
    asset: str
    fingerprint: str
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    cache_hit: bool = False


# the artifact's own exclusive lock, if free now (None: someone builds or reads it, so retention keeps it)
TryLock = Callable[[str, str], "contextlib.AbstractContextManager | None"]


class ArtifactStore:
    """Directories under `root/<asset>/<fingerprint>/`, each complete once its manifest exists."""

    def __init__(self, root: str | Path, keep_last: int | None = None, lock: TryLock | None = None,
                 remove_stale_locks: Callable[[str], list[Path]] | None = None):
        self.root = Path(root).resolve()
        self.keep_last = keep_last
        self.try_lock = lock
        self.remove_stale_locks = remove_stale_locks

    def path_for(self, asset: str, fp: str) -> Path:
        return self.root / asset / fp

    def lookup(self, asset: str, fp: str) -> Artifact | None:
        manifest = self.path_for(asset, fp) / MANIFEST
        try:
            data = json.loads(manifest.read_text())
        except FileNotFoundError:
            return None
        return Artifact(asset, fp, manifest.parent, data.get("metrics", {}), cache_hit=True)

    def find(self, fp_or_path: str) -> Artifact | None:
        """An artifact by fingerprint (or a unique prefix of one), or by its directory."""
        path = Path(fp_or_path)
        if (path / MANIFEST).is_file():
            return self.lookup(path.resolve().parent.name, path.resolve().name)
        hits = sorted(self.root.glob(f"*/{fp_or_path}*/{MANIFEST}"))
        return self.lookup(hits[0].parent.parent.name, hits[0].parent.name) if len(hits) == 1 else None

    def manifests(self) -> list[dict]:
        """Every finished artifact's manifest (the catalog heals from these)."""
        found = []
        for path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            if path.parent.name.startswith("."):  # set aside by --rebuild (.damaged-*): not an artifact
                continue
            with contextlib.suppress(OSError, ValueError):
                found.append({**json.loads(path.read_text()), "path": str(path.parent)})
        return found

    def touch(self, artifact: Artifact) -> None:
        """Mark as used now: retention keeps the most recently used artifacts."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(artifact.path / MANIFEST)

    def publish(self, asset: str, fp: str, work: Path, manifest: dict) -> Artifact:
        """Write the manifest (with every file's size and sha256) into `work` and rename it into place: the
        artifact appears whole or not at all."""
        manifest = {**manifest, "files": file_digests(work)}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        final = self.path_for(asset, fp)
        if final.exists():  # published meanwhile by a run that did not hold the lock (never, with Home's locks)
            shutil.rmtree(work)
        else:
            os.replace(work, final)
        return Artifact(asset, fp, final, manifest.get("metrics", {}), cache_hit=False)

    def prune(self, asset: str, keep: Path) -> list[Path]:
        """Retention: remove all but the `keep_last` most recently used artifacts of an asset, never one that a
        running stage holds, then the asset's lock files that no artifact or build needs any more. Returns the
        removed artifacts."""
        if self.keep_last is None:
            return []
        used = {}
        for manifest in (self.root / asset).glob(f"*/{MANIFEST}"):
            if manifest.parent.name.startswith("."):  # a damaged copy set aside: the start-of-run cleanup's
                continue
            with contextlib.suppress(FileNotFoundError):  # another run's retention may remove it meanwhile
                used[manifest.parent] = manifest.stat().st_mtime
        done = sorted(used, key=lambda d: (d == keep, used[d]), reverse=True)
        removed = []
        for path in done[self.keep_last:]:
            held = self.try_lock(asset, path.name) if self.try_lock else contextlib.nullcontext()
            if held is None:
                continue
            with held:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        if self.remove_stale_locks:
            self.remove_stale_locks(asset)
        return removed

    def manifest(self, artifact: Artifact) -> dict[str, Any]:
        return json.loads((artifact.path / MANIFEST).read_text())

    def verify(self, artifact: Artifact, hashing: bool = True) -> bool:
        """Raise ArtifactDamaged when a file differs from its manifest (`hashing`: re-hash, remembered in this
        process; else sizes only); False when the artifact predates digests."""
        return check(artifact.asset, artifact.fingerprint, artifact.path, self.manifest(artifact), hashing)
