"""The model a command names: a model directory as given, or the artifact a fingerprint names (`chat`, `serve`)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import TunelineError


def model_path(model: str, artifact_root: str) -> Path:
    """A model directory as given, or the artifact a fingerprint names in the catalog."""
    path = Path(model)
    if path.is_dir():
        return path
    from engine.store.home import Home
    from engine.models.load import model_dir
    found = Home(artifact_root).store().find(model)
    if found is None:
        raise TunelineError(f"{model!r} is neither a model directory nor the fingerprint (or a unique prefix of one) "
                            f"of an artifact under {Path(artifact_root).resolve()}")
    return model_dir(found.path)
