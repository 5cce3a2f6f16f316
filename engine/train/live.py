"""Live training points: at each logging step (and each evaluation) the numbers the UI plots while a stage trains,
handed to the sink of this process (pipelines/train_process.py sends them through Dagster Pipes; the orchestrator
records each as an observation of the asset, assets/live_points.py). No sink: no points (the progress lines remain).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from transformers import TrainerCallback

POINT = "point"  # the key of a Pipes custom message that carries one live point (the final metrics carry none)
MAX_POINTS_PER_SECOND = 4  # a faster logging cadence is thinned; an evaluation's point is never dropped
# the trainer's log key -> the point's key (what the asset's Plots tab names each curve)
NAMES = {"loss": "train/loss", "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm",
         "eval_loss": "eval/loss", "reward": "train/reward"}

_sink: Callable[[dict], None] | None = None  # one training stage per process: its point sink, while it runs


@contextlib.contextmanager
def points_to(sink: Callable[[dict], None] | None) -> Iterator[None]:
    """Send this process's live points to `sink` for the block (None: nowhere)."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


class LivePoints(TrainerCallback):
    """One point per logging step from rank 0: step, train/loss, train/learning_rate, eval/loss (where the step
    evaluated) and train/tokens_per_second (tokens this run / seconds this run). At most MAX_POINTS_PER_SECOND: a
    point that comes sooner waits, replaced by a newer one, and the last one waiting goes out when training ends."""

    def __init__(self, stage: str):
        self.stage = stage
        self.started, self.first_tokens, self.last_sent = time.monotonic(), 0, float("-inf")
        self.waiting: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # the first step's point goes out, whatever came before
        self.started, self.first_tokens, self.last_sent = time.monotonic(), state.num_input_tokens_seen, float("-inf")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if _sink is None or not state.is_world_process_zero or not logs:
            return control
        point = {name: float(logs[key]) for key, name in NAMES.items() if isinstance(logs.get(key), (int, float))}
        if not point:  # the end-of-training summary (train_loss, train_runtime): the materialization has it
            return control
        now = time.monotonic()
        tokens = state.num_input_tokens_seen - self.first_tokens
        if tokens > 0 and now > self.started:
            point["train/tokens_per_second"] = round(tokens / (now - self.started), 1)
        point = {"stage": self.stage, "step": state.global_step, **point}
        if "eval/loss" in point:  # an evaluation is never held back; a training point waiting goes first
            self.flush()
            self.send(point, now)
        elif now - self.last_sent < 1 / MAX_POINTS_PER_SECOND:
            self.waiting = point
        else:
            self.waiting = None
            self.send(point, now)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()
        return control

    def flush(self) -> None:
        if self.waiting is not None:
            self.send(self.waiting, time.monotonic())
            self.waiting = None

    def send(self, point: dict, now: float) -> None:
        self.last_sent = now
        _sink(point)
