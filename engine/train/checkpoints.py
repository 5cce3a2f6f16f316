"""Training that survives a crash: checkpoints that count only once complete, resume from the last complete
one, a checkpoint on SIGINT/SIGTERM before exiting, and one progress line per logging step.

transformers' Trainer already saves and restores everything a resume needs (weights, optimizer, scheduler,
RNG states, global step, position in the epoch). What it lacks, and this module adds: a checkpoint it wrote
half (the process was killed mid-save) is indistinguishable from a whole one, so each checkpoint gets a
COMPLETE marker once its files are flushed, and only marked checkpoints are resumed from. It also rotates the
checkpoints itself (save_total_limit): transformers' rotation runs before that marker exists, so it cannot tell
which checkpoint a resume needs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

COMPLETE = "COMPLETE"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; a rerun resumes from it. `where`: the
    step it stopped at, as the orchestrator's stop line names it."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


def last_complete_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest checkpoint-N under `trainer_dir` that carries its COMPLETE marker (a half-written one never)."""
    if not trainer_dir.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in trainer_dir.iterdir()
            if (m := CHECKPOINT.match(p.name)) and (p / COMPLETE).is_file()]
    return max(done)[1] if done else None


def rotate(trainer_dir: Path, limit: int | None, saving: bool) -> list[Path]:
    """Remove checkpoints beyond `limit`, never the last complete one (a resume needs it). Called with nothing
    being written: before a save (`saving`) it keeps limit - 1 complete ones, so the one about to be written
    makes `limit` on disk (transformers deletes only after writing: limit + 1 while saving); after a save, `limit`.
    A checkpoint without its marker is half of one a kill left (nothing writes it now): it goes too. Returns the
    removed."""
    if limit is None or not trainer_dir.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in trainer_dir.iterdir() if (m := CHECKPOINT.match(p.name)))
    complete = [p for _, p in found if (p / COMPLETE).is_file()]
    keep = set(complete[-max(limit - 1 if saving else limit, 1):])
    removed = [p for _, p in found if p not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def flush_tree(directory: Path) -> None:
    """fsync every file, then the directory: the marker written after this is never ahead of the data."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class CrashSafeCheckpoints(TrainerCallback):
    """Marks each saved checkpoint complete, keeps at most `limit` checkpoints (rotate), and turns SIGINT/SIGTERM
    into "save a checkpoint, then stop"."""

    def __init__(self, limit: int | None = None):
        self.interrupted: str | None = None
        self.previous: dict[int, object] = {}
        self.limit = limit

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.request_stop)

    def request_stop(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save and state.is_world_process_zero:  # the trainer saves right after this step
            rotate(Path(args.output_dir), self.limit, saving=True)
        return control

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank has written its part (its RNG state) before the marker
        if checkpoint.is_dir() and state.is_world_process_zero:
            flush_tree(checkpoint)
            (checkpoint / COMPLETE).write_text(str(state.global_step))
            rotate(Path(args.output_dir), self.limit, saving=False)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


class ProgressLines(TrainerCallback):
    """One line per logging step: step / total, loss, learning rate, tokens per second (where the trainer counts the
    tokens it sees: include_num_input_tokens_seen), ETA; one per evaluation: its loss (the live points' numbers)."""

    def __init__(self, stage: str, say: Callable[[str], None], interval: float = 2.0):
        self.stage, self.say, self.interval = stage, say, interval  # at most one line per interval, and the last
        self.started, self.first_step, self.first_tokens = time.monotonic(), 0, 0
        self.said = -interval

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()  # a resumed run counts from its own start
        self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "eval_loss" in logs:
            self.say(f"{self.stage}: step {state.global_step}, eval loss {logs['eval_loss']:.4f}")
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return control
        if time.monotonic() - self.said < self.interval and state.global_step < state.max_steps:
            return control
        self.said = time.monotonic()
        done = max(state.global_step - self.first_step, 1)
        per_step = (time.monotonic() - self.started) / done
        eta = per_step * max(state.max_steps - state.global_step, 0)
        tokens = state.num_input_tokens_seen - self.first_tokens
        speed = f", {tokens / (time.monotonic() - self.started):,.0f} tokens/s" if tokens > 0 else ""
        rate = f", lr {logs['learning_rate']:.3g}" if "learning_rate" in logs else ""
        self.say(f"{self.stage}: step {state.global_step}/{state.max_steps}, loss {logs['loss']:.4f}{rate}{speed}, "
                 f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
        return control


def quiet(trainer):
    """The trainer without transformers' PrinterCallback: its raw log dicts give way to ProgressLines."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def evaluate_before_training(trainer) -> float:
    """The eval loss before any step. transformers' evaluate() on an untrained Trainer prepares the model for
    evaluation only and marks it prepared, so train() would then skip DistributedDataParallel and every rank
    would train on its own gradients; the mark is taken back here (no library option does it)."""
    loss = quiet(trainer).evaluate()["eval_loss"]
    model = trainer.model
    if "_is_accelerate_prepared" in vars(model):
        del model._is_accelerate_prepared
        if "_original_forward" in vars(model):  # the evaluation's autocast wrapper: train() puts its own
            model.forward = model._original_forward
            del model._original_forward
        trainer.accelerator._models[:] = [m for m in trainer.accelerator._models if m is not model]
    trainer.model_wrapped = model
    return loss


def train_resumably(trainer, stage: str, say: Callable[[str], None] = print, keep: int | None = None):
    """trainer.train(), resumed from the last complete checkpoint of a previous attempt if there is one, keeping
    at most `keep` checkpoints (the recipe's save_total_limit; None: all). Returns (TrainOutput, the step it resumed from or None). Raises TrainingInterrupted after a SIGINT/SIGTERM
    (a checkpoint was saved first)."""
    guard = CrashSafeCheckpoints(keep)
    quiet(trainer).add_callback(guard)
    trainer.add_callback(ProgressLines(stage, say))
    checkpoint = last_complete_checkpoint(Path(trainer.args.output_dir))
    resumed = int(CHECKPOINT.match(checkpoint.name).group(1)) if checkpoint else None
    if checkpoint:
        say(f"{stage}: resuming from {checkpoint.name} (step {resumed})")
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if guard.interrupted:
        step = f"step {trainer.state.global_step}/{trainer.state.max_steps}"
        raise TrainingInterrupted(f"{stage}: stopped by {guard.interrupted} at {step} after saving a checkpoint; "
                                  "run it again to resume", where=step)
    return result, resumed
