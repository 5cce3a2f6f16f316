"""Experiment tracking of a training stage (the recipe's report_to): TensorBoard event files or one local MLflow
run inside the stage's artifact, open around everything the stage measures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.recipe import TrainSection

TENSORBOARD_DIR, MLFLOW_DB = "tensorboard", "mlflow.db"  # inside the stage's artifact


@contextlib.contextmanager
def tracking(cfg: TrainSection, out: Path, stage: str):
    """TensorBoard event files in out/tensorboard, or one MLflow run (named after the stage, experiment "tuneline")
    in a local SQLite file out/mlflow.db, no server (MLflow 3 retired the plain-folder store). The run is opened
    here so that evaluations before and after training land in it too; transformers' callbacks log into it."""
    if cfg.report_to == "tensorboard":
        with environment({"TENSORBOARD_LOGGING_DIR": str(out / TENSORBOARD_DIR)}):
            yield
    elif cfg.report_to == "mlflow":
        import mlflow
        previous = mlflow.get_tracking_uri()
        with environment({"MLFLOW_TRACKING_URI": mlflow_uri(out), "MLFLOW_EXPERIMENT_NAME": "tuneline"}):
            mlflow.set_tracking_uri(mlflow_uri(out))
            mlflow.set_experiment("tuneline")
            try:
                with mlflow.start_run(run_name=stage):
                    yield
            finally:
                mlflow.set_tracking_uri(previous)
    else:
        yield


@contextlib.contextmanager
def environment(settings: dict[str, str]):
    """Environment variables set for the block, then restored: trackers' callbacks read them at setup."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def mlflow_uri(artifact: Path) -> str:
    """Where a stage's MLflow run is: `mlflow ui --backend-store-uri <this>` shows it."""
    return f"sqlite:///{(artifact / MLFLOW_DB).resolve()}"
