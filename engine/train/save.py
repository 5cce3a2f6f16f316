"""Where a trained stage's weights go: an adapter to out/adapter or full weights to out/model, or one full model
in `out` itself with a LoRA merged in (pt_model, reward_model: every later stage loads them as a model); rank 0
writes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from engine.models.load import ADAPTER_DIR, FULL_DIR
from engine.train.adapters import is_adapter
from engine.train.arguments import SCRATCH_DIR

if TYPE_CHECKING:
    from engine.recipe import TrainSection


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes the artifact and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def save_model(model, tokenizer, target: Path) -> Path:
    """Weights (safetensors) and tokenizer to `target`, by rank 0 only."""
    if is_main_process():
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    return target


def save_trained(model, tokenizer, cfg: TrainSection, out: Path, merged: bool = False):
    """An adapter to out/adapter or full weights to out/model; `merged`: one full model in `out` (a LoRA merged
    in). Returns the model saved (the merged one, where merged)."""
    if merged:
        model = model.merge_and_unload() if is_adapter(cfg) else model
        save_model(model, tokenizer, out)
    else:
        save_model(model, tokenizer, out / (ADAPTER_DIR if is_adapter(cfg) else FULL_DIR))
    return model


def remove_scratch(out: Path) -> None:
    """The trainer's scratch directory, checkpoints included: the saved stage is the artifact."""
    if is_main_process():
        shutil.rmtree(out / SCRATCH_DIR, ignore_errors=True)
