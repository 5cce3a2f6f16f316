"""The shape every training stage follows, read top to bottom as torchtune's recipes are: set up (the stage's
model, data view and TRL trainer, under the tracker), measure before, train (resuming from the last complete
checkpoint), measure after, save, report. A stage (pt, sft, reward, dpo) supplies only what differs: a
TrainingStage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine.train.checkpoints import evaluate_before_training, train_resumably
from engine.train.live import LivePoints
from engine.train.report import RunStart, summary, throughput
from engine.train.save import is_main_process, remove_scratch, save_trained
from engine.train.sharding import Sharding
from engine.train.tracking import tracking

if TYPE_CHECKING:
    from engine.recipe import TrainSection


def no_measures(_) -> dict:
    return {}


@dataclass(frozen=True)
class TrainingStage:
    """What one training stage supplies; the rest is the same for all four (train_stage)."""
    name: str  # its progress lines' prefix: "sft", "reward", ...
    cfg: TrainSection  # its section of the recipe
    out: Path  # its work directory: scratch in out/_trainer, weights saved here
    tokenizer: Any  # saved beside the weights
    set_up: Callable[[], Any]  # its TRL trainer: arguments built first, then its model (loaded, prepared), data view
    before: Callable[[Any], dict] = no_measures  # held-out measures before the first step, from the trainer
    after: Callable[[Any], dict] = no_measures  # measures after the last step, from the trainer (still tracked)
    merged: bool = False  # saved as one full model in `out` with a LoRA merged in, else out/adapter or out/model
    on_saved: Callable[[Any], dict] = no_measures  # measures of the model as saved (merged, where merged), by rank 0;
    # it gets None where the model is only on disk (sharded)
    tracker_run: str = ""  # the tracker's run name, where not `name`
    saved_model: Callable[[Any], Any] | None = None  # what rank 0 saves where not the trainer's model (ppo: the policy)
    sharding: Sharding = Sharding()  # DeepSpeed or FSDP2 (engine/train/sharding.py), in set_up's arguments too


def train_stage(stage: TrainingStage, say: Callable[[str], None] = print) -> dict:
    """Set up, train, save, report; returns the run summary (engine/train/report.py), train_loss, this run's
    throughput and the stage's own measures."""
    with tracking(stage.cfg, stage.out, stage.tracker_run or stage.name):  # evaluations land in the run too
        trainer = stage.set_up()
        trainer.add_callback(LivePoints(stage.name))  # the UI's live curves, the evaluations before and after included
        before = stage.before(trainer)
        start = RunStart()
        trainer.add_callback(start)
        result, resumed = train_resumably(trainer, stage.name, say, keep=stage.cfg.save_total_limit)
        after = stage.after(trainer)
    report = summary(trainer, stage.cfg, resumed)  # what trained, before a merge folds the adapter away
    saved = save_trained(trainer, stage.tokenizer, stage.cfg, stage.out, stage.merged, stage.sharding,
                         stage.saved_model(trainer) if stage.saved_model else None)
    remove_scratch(stage.out)
    return {**report, "train_loss": round(result.training_loss, 4),
            **throughput(trainer, start, result.metrics["train_runtime"]), **before, **after,
            **(stage.on_saved(saved) if is_main_process() else {})}  # only rank 0 reports


def eval_loss_before(trainer) -> dict:
    """The held-out loss before any step: the starting model's (a LoRA starts as a no-op)."""
    return {"eval_loss_before": round(evaluate_before_training(trainer), 4)}


def eval_loss_after(trainer) -> dict:
    return {"eval_loss_after": round(trainer.evaluate()["eval_loss"], 4)}


def without_row_ids(dataset):
    """A view's split as a trainer takes it: without the row ids that trace it back to the raw data."""
    return dataset.remove_columns([c for c in ("row_id",) if c in dataset.column_names])
