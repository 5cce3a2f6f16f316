"""The model a command names: a model directory as given, or the artifact a fingerprint names (`chat`, `serve`),
checked against the digests it recorded before anything loads it."""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import TunelineError


def model_path(model: str, artifact_root: str) -> Path:
    """A model directory as given, or the artifact a fingerprint names in the catalog; either verified (its
    manifest.json or lineage.json digests) first."""
    from engine.store.digests import check_directory
    path = Path(model)
    if path.is_dir():
        check_directory(path)
        return path
    from engine.store.home import Home
    from engine.models.load import model_dir
    found = Home(artifact_root).store().find(model)
    if found is None:
        raise TunelineError(f"{model!r} is neither a model directory nor the fingerprint (or a unique prefix of one) "
                            f"of an artifact under {Path(artifact_root).resolve()}")
    check_directory(found.path)
    return model_dir(found.path)


def verified_deployment(directory: Path) -> Path:
    """A deployment (serve.json) and the export it serves, both checked against their digests."""
    from engine.store.digests import check_directory
    check_directory(directory)
    config = directory / "serve.json"
    if config.is_file():
        export = Path(json.loads(config.read_text())["model_path"])
        if export.is_dir():
            check_directory(export)
    return directory
