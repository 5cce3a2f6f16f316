"""Experiment tracking of a training stage (the recipe's report_to): TensorBoard event files, one local MLflow run
or one Weights & Biases run (offline unless a key is set) inside the stage's artifact, open around everything the
stage measures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.recipe import TrainSection

TENSORBOARD_DIR, MLFLOW_DB, WANDB_DIR = "tensorboard", "mlflow.db", "wandb"  # inside the stage's artifact


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
    elif cfg.report_to == "wandb":
        with wandb_run(out, stage):
            yield
    else:
        yield


def wandb_mode() -> str:
    """WANDB_MODE where set; else online with an API key (WANDB_API_KEY), offline without one: the run's files stay
    in the artifact for a later `wandb sync`, and nothing reaches the network."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


@contextlib.contextmanager
def wandb_run(out: Path, stage: str):
    """One W&B run (project WANDB_PROJECT, else "tuneline"; named after the stage) with its files in out/wandb;
    transformers' WandbCallback logs into the run it finds open."""
    import wandb
    mode = wandb_mode()
    with environment({"WANDB_MODE": mode, "WANDB_DIR": str(out), "WANDB_SILENT": "true"}):
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tuneline"), name=stage, dir=str(out), mode=mode,
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        try:
            yield
        finally:
            run.finish()


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
