"""A training stage's run summary, the same keys for every stage: steps, the step it resumed from, the loss curve,
what was trainable, where and how many processes, and the throughput of this process's run."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback

from engine.models.device import device_type

if TYPE_CHECKING:
    from engine.recipe import TrainSection


class RunStart(TrainerCallback):
    """The trainer's token count when this process's training begins: after a resume, the checkpoint's."""

    def __init__(self):
        self.tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens = state.num_input_tokens_seen


def throughput(trainer, start: RunStart, runtime: float) -> dict:
    """Tokens trained in this process's run (the trainer's own count, include_num_input_tokens_seen: every rank's,
    padding excluded; a resumed run counts from its checkpoint, max_steps where it stopped) over this run's
    seconds. None where the trainer counts no tokens (ORPO's batches have no input_ids)."""
    if trainer.args.include_num_input_tokens_seen == "no":
        return {"tokens_this_run": None, "seconds_this_run": round(runtime, 4), "tokens_per_second": None}
    tokens = trainer.state.num_input_tokens_seen - start.tokens
    return {"tokens_this_run": tokens, "seconds_this_run": round(runtime, 4),
            "tokens_per_second": round(tokens / runtime, 1) if runtime > 0 else None}


def loss_curve(trainer) -> list[dict]:
    return [{"step": h["step"], "loss": round(h["loss"], 4)} for h in trainer.state.log_history if "loss" in h]


def trainable_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total}


def summary(trainer, cfg: TrainSection, resumed_from: int | None = None) -> dict:
    """The run summary every stage reports, read from the trainer after training (before a LoRA is merged in)."""
    peak = {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)} if torch.cuda.is_available() else {}
    return {**peak, "processes": int(os.environ.get("WORLD_SIZE", "1")), "steps": trainer.state.global_step,
            "resumed_from_step": resumed_from, "loss_curve": loss_curve(trainer),
            "device": device_type(), "finetuning_type": cfg.finetuning_type,
            "report_to": cfg.report_to, **trainable_parameters(trainer.model)}
