"""Where a trained stage's weights go: an adapter to out/adapter or full weights to out/model, or one full model
in `out` itself with a LoRA merged in (pt_model, reward_model: every later stage loads them as a model).

Every rank saves through the trainer (trainer.save_model): under ZeRO-3 it gathers the 16-bit weights
(stage3_gather_16bit_weights_on_model_save), under FSDP the full state dict, both collectives every rank must enter;
rank 0 writes what was gathered. A LoRA trained sharded is merged by rank 0 from the adapter it saved, on the CPU:
partitioned weights cannot be merged in place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from engine.models.load import ADAPTER_DIR, FULL_DIR
from engine.train.adapters import is_adapter
from engine.train.arguments import SCRATCH_DIR
from engine.train.sharding import Sharding

if TYPE_CHECKING:
    from engine.recipe import TrainSection

GATHERED_DIR = "gathered"  # a sharded LoRA as the trainer saved it, in the scratch directory, before rank 0 merges it
TRAINER_ARGUMENTS = "training_args.bin"  # the trainer's pickled arguments, which save_model writes beside the weights


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes the artifact and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def save_model(model, tokenizer, target: Path) -> Path:
    """Weights (safetensors) and tokenizer to `target`, by rank 0 only (a model no rank holds a shard of)."""
    if is_main_process():
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    return target


def save_through_trainer(trainer, tokenizer, target: Path) -> Path:
    """The trainer's model to `target`: every rank calls save_model (it gathers the shards), rank 0 writes the
    weights and the stage's tokenizer, without the trainer's pickled arguments (no pickle in an artifact)."""
    trainer.save_model(str(target))
    if is_main_process():
        (target / TRAINER_ARGUMENTS).unlink(missing_ok=True)
        tokenizer.save_pretrained(target)
    return target


def merged_from_saved(trainer, adapter_dir: Path):
    """The trained base with the adapter saved in `adapter_dir` merged in, loaded on the CPU in the dtype the frozen
    weights trained in (the base's class and config, a reward model's one-label head included)."""
    from peft import PeftModel
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    base = peft_model.get_base_model()
    dtype = next(p.dtype for p in base.parameters() if not p.requires_grad)
    start = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path
    fresh = type(base).from_pretrained(start, config=base.config, dtype=dtype, trust_remote_code=False)
    return PeftModel.from_pretrained(fresh, adapter_dir).merge_and_unload()


def saved_dir(cfg: TrainSection, out: Path, merged: bool) -> Path:
    """Where the weights go: `out` itself for one merged model, else out/adapter or out/model."""
    return out if merged else out / (ADAPTER_DIR if is_adapter(cfg) else FULL_DIR)


def save_trained(trainer, tokenizer, cfg: TrainSection, out: Path, merged: bool = False,
                 sharding: Sharding = Sharding(), model=None):
    """An adapter to out/adapter or full weights to out/model; `merged`: one full model in `out` (a LoRA merged
    in). `model`: what is saved where it is not the trainer's model (ppo: the policy; never sharded), by rank 0.
    Returns the model saved (the merged one, where merged), or None where it is only on disk (sharded; rank 0
    holds the merged one)."""
    merges = merged and is_adapter(cfg)
    if model is not None or (merges and not sharding.on):  # every rank holds the whole model: merged in place
        model = model if model is not None else trainer.model
        model = model.merge_and_unload() if merges else model
        save_model(model, tokenizer, saved_dir(cfg, out, merged))
        return model
    if merges:
        gathered = save_through_trainer(trainer, tokenizer, out / SCRATCH_DIR / GATHERED_DIR)
        if not is_main_process():
            return None
        model = merged_from_saved(trainer, gathered)
        save_model(model, tokenizer, out)
        return model
    save_through_trainer(trainer, tokenizer, saved_dir(cfg, out, merged))
    return None if sharding.partitions_weights else trainer.model


def remove_scratch(out: Path) -> None:
    """The trainer's scratch directory, checkpoints included: the saved stage is the artifact."""
    if is_main_process():
        shutil.rmtree(out / SCRATCH_DIR, ignore_errors=True)
