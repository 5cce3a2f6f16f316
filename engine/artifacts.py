"""Artifacts: one directory per asset result, named by its fingerprint, written atomically.

fingerprint = hash(parents' fingerprints, resolved config section, engine code version), so the
same inputs return the stored artifact at once, and a crash never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

MANIFEST = "manifest.json"
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


def code_version(*modules: ModuleType) -> str:
    """Hash of the source of the engine modules a stage runs: editing them invalidates its artifacts."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]


def fingerprint(asset: str, parents: list[Artifact], config: Any, code: str) -> str:
    payload = json.dumps(
        {"asset": asset, "parents": sorted(p.fingerprint for p in parents), "config": config, "code": code},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ArtifactStore:
    """Directories under `root/<asset>/<fingerprint>/`, each complete once its manifest exists."""

    def __init__(self, root: str | Path, keep_last: int | None = None):
        self.root = Path(root).resolve()
        self.keep_last = keep_last

    def path_for(self, asset: str, fp: str) -> Path:
        return self.root / asset / fp

    def lookup(self, asset: str, fp: str) -> Artifact | None:
        manifest = self.path_for(asset, fp) / MANIFEST
        if not manifest.is_file():
            return None
        data = json.loads(manifest.read_text())
        return Artifact(asset, fp, manifest.parent, data.get("metrics", {}), cache_hit=True)

    def find(self, fp_or_path: str) -> Artifact | None:
        """An artifact by fingerprint (or a unique prefix of one), or by its directory."""
        path = Path(fp_or_path)
        if (path / MANIFEST).is_file():
            return self.lookup(path.resolve().parent.name, path.resolve().name)
        hits = sorted(self.root.glob(f"*/{fp_or_path}*/{MANIFEST}"))
        return self.lookup(hits[0].parent.parent.name, hits[0].parent.name) if len(hits) == 1 else None

    def build(
        self,
        asset: str,
        parents: list[Artifact],
        config: Any,
        code: str,
        work: Callable[[Path], dict[str, Any]],
    ) -> Artifact:
        """Return the stored artifact for these inputs, or run `work(tmp_dir) -> metrics` and publish it.

        `work` writes into a private temp directory that is renamed into place only on success.
        """
        fp = fingerprint(asset, parents, config, code)
        cached = self.lookup(asset, fp)
        if cached is not None:
            os.utime(cached.path / MANIFEST)  # retention keeps the most recently used artifacts
            return cached
        final = self.path_for(asset, fp)
        tmp = final.parent / f".tmp-{fp}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            started = time.time()
            metrics = work(tmp)
            manifest = {
                "asset": asset, "fingerprint": fp, "parents": [p.fingerprint for p in parents],
                "config": config, "code_version": code, "metrics": metrics,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 2),
                "versions": library_versions(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if final.exists():  # another run published the same fingerprint first: same inputs, same result
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune(asset, keep=final)
        return Artifact(asset, fp, final, metrics, cache_hit=False)

    def prune(self, asset: str, keep: Path) -> list[Path]:
        """Retention: remove all but the `keep_last` most recently used artifacts of an asset. Returns the removed."""
        if self.keep_last is None:
            return []
        done = sorted((p.parent for p in (self.root / asset).glob(f"*/{MANIFEST}")),
                      key=lambda d: (d == keep, (d / MANIFEST).stat().st_mtime), reverse=True)
        removed = done[self.keep_last:]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def manifest(self, artifact: Artifact) -> dict[str, Any]:
        return json.loads((artifact.path / MANIFEST).read_text())
