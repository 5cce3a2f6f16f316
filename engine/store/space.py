"""Free space, checked before a training or export stage writes: an estimate of the most it will hold on disk at
once, compared with what the home's filesystem has free. A shortfall stops the stage before any work, in one line.

What the estimate counts (simple and on the large side; nothing else is counted: logs, plots and data views are
small beside weights):
  model     the weights the stage starts from, as stored (W bytes; the parameter count P is W over the stored
            dtype's bytes, from config.json)
  trainable full: P; freeze: P x trained layers / layers; lora/dora: rank x (in + out) of every linear layer of
            every decoder layer (q, k, v, o, gate, up, down: lora_target "all"; fewer targets write less)
  checkpoint the saved weights (the adapter in fp32, 4 bytes a trainable parameter; else W) + Adam's two fp32
            moments (8 bytes a trainable parameter) + the model folder's other files (tokenizer, config) + 1 MiB of
            scheduler, RNG and trainer state
  training  checkpoints on disk at once (max(save_total_limit, 2): the last complete one stays while the next is
            written; unset: counted as 2, the check cannot know how many a run keeps) x checkpoint + the artifact
            (the adapter, or W for a full or merged model, with the other files)
  export    merged_model: W; gptq_model/awq_model: P bytes (4-bit weights with their scales and 16-bit embeddings
            stay under 8 bits a parameter)
What the stage's work directory already holds (a resumed training's checkpoints) is subtracted. The operator can
skip the check with TUNELINE_SKIP_SPACE_CHECK=1 (a filesystem that reports free space wrongly, or a known
smaller need)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.errors import TunelineError

SKIP = "TUNELINE_SKIP_SPACE_CHECK"
WEIGHT_FILES = ("*.safetensors", "*.bin")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
STATE_FILES = 1 << 20  # a checkpoint's scheduler, RNG and trainer state and the optimizer file's own overhead
LOCAL_MODEL = "local_model.json"  # engine/models/load.py's pointer; read here without importing torch

# the recipe section each training stage reads, the parent whose weights it starts from, and whether its artifact
# is one full model (a LoRA merged in) whatever its finetuning_type
TRAINING = {"pt_model": ("pt", "base_model", True), "sft_adapter": ("sft", "pt_model", False),
            "reward_model": ("reward", "pt_model", True), "dpo_adapter": ("dpo", "pt_model", False)}
EXPORTS = {"merged_model": ("pt_model", 1.0), "gptq_model": ("merged_model", None),
           "awq_model": ("merged_model", None)}  # None: P bytes (a 4-bit export); else that many times W


class NotEnoughSpace(TunelineError):
    """The stage's estimated disk use is more than the home's filesystem has free."""


@dataclass(frozen=True)
class Model:
    weights: int  # W: bytes of weight files as stored
    parameters: int  # P
    config: dict
    others: int  # its other files (tokenizer, config): saved again beside every copy of the weights


@dataclass(frozen=True)
class Estimate:
    total: int  # bytes the stage may hold at once
    counts: str  # what was counted, for the message
    checkpoints: bool = False  # checkpoints counted: fewer kept would need less


def gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def model_at(artifact: Path) -> Model | None:
    """The weights an artifact holds or names (local_model.json), None where it holds none."""
    pointer = artifact / LOCAL_MODEL
    directory = artifact / json.loads(pointer.read_text())["path"] if pointer.is_file() else artifact
    if not directory.is_dir():
        return None  # a pointer to a checkpoint that is gone: the stage's own load says so, naming it
    weights = sum(p.stat().st_size for pattern in WEIGHT_FILES for p in directory.glob(pattern))
    others = sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) - weights
    if not weights:
        return None
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16").removeprefix("torch.")
    return Model(weights, weights // DTYPE_BYTES.get(dtype, 2), config, others)


def lora_parameters(config: dict, rank: int) -> int | None:
    """rank x (in + out) summed over a decoder layer's linear layers, times the layers; None without the sizes."""
    try:
        h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
    except KeyError:
        return None
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, (config.get("num_key_value_heads") or heads) * head_dim
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return rank * per_layer * layers


def trainable(model: Model, cfg: Any) -> int:
    if cfg.finetuning_type in ("lora", "dora"):
        return lora_parameters(model.config, cfg.lora_rank) or model.parameters  # unknown layout: all, the large side
    if cfg.finetuning_type == "freeze":
        layers = model.config.get("num_hidden_layers") or 1
        return model.parameters * min(abs(cfg.freeze_trainable_layers), layers) // layers
    return model.parameters


def training_estimate(stage: str, recipe: Any, parents: dict[str, Path]) -> Estimate | None:
    section, source, merged = TRAINING[stage]
    if stage == "pt_model" and not recipe.pt.dataset:
        return None  # pt off names the base model: it writes no weights
    model = model_at(parents[source]) if source in parents else None
    if model is None:
        return None
    cfg = getattr(recipe, section)
    train = trainable(model, cfg)
    adapter = cfg.finetuning_type in ("lora", "dora")
    saved = (4 * train if adapter else model.weights) + model.others
    checkpoint = saved + 8 * train + STATE_FILES
    kept = max(cfg.save_total_limit or 2, 2)
    artifact = (model.weights if merged or not adapter else 4 * train) + model.others
    return Estimate(kept * checkpoint + artifact,
                    f"{kept} checkpoints x {gb(checkpoint)} (weights + Adam state of {train:,} trainable parameters) "
                    f"+ the artifact {gb(artifact)}", checkpoints=True)


def export_estimate(stage: str, parents: dict[str, Path]) -> Estimate | None:
    source, times = EXPORTS[stage]
    model = model_at(parents[source]) if source in parents else None
    if model is None:
        return None
    size = (int(model.weights * times) if times else model.parameters) + model.others
    return Estimate(size, f"the exported model {gb(size)}")


def estimate(stage: str, recipe: Any, parents: dict[str, Path]) -> Estimate | None:
    """What `stage` may hold on disk at once, or None for a stage that writes little (data, evaluation, deployment)."""
    if stage in TRAINING:
        return training_estimate(stage, recipe, parents)
    if stage in EXPORTS:
        return export_estimate(stage, parents)
    return None


def used(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0


def check_space(stage: str, recipe: Any, parents: dict[str, Path], work: Path,
                log: Callable[[str], None] = print) -> Estimate | None:
    """Stop `stage` before it starts if its estimate, less what its work directory already holds, is more than the
    free space of the filesystem `work` is on. Returns the estimate (None: not counted)."""
    found = estimate(stage, recipe, parents)
    if found is None:
        return None
    need = max(found.total - used(work), 0)
    free = shutil.disk_usage(next(p for p in (work, *work.parents) if p.exists())).free
    if need <= free:
        return found
    if os.environ.get(SKIP) == "1":
        log(f"{stage}: needs about {gb(need)}, {gb(free)} free; {SKIP}=1: running anyway")
        return found
    fewer = ", lower save_total_limit" if found.checkpoints else ""
    raise NotEnoughSpace(f"{stage} needs about {gb(need)} on disk ({found.counts}) and {work.parent.parent} has "
                         f"{gb(free)} free: free some space{fewer}, or set {SKIP}=1 to run anyway")
