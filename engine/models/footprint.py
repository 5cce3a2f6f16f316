"""What a training or export stage writes to disk, estimated from the model it starts from (the space check of
engine/store/space.py compares it with the free space). Each stage declares its own on its Stage (`writes`,
engine/graph.py); this module knows how models lie on disk (weights, config.json, the local_model.json pointer).

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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.store.space import Estimate, gb

LOCAL_MODEL = "local_model.json"  # an artifact that names a model directory instead of holding one
WEIGHT_FILES = ("*.safetensors", "*.bin")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
STATE_FILES = 1 << 20  # a checkpoint's scheduler, RNG and trainer state and the optimizer file's own overhead


@dataclass(frozen=True)
class Model:
    weights: int  # W: bytes of weight files as stored
    parameters: int  # P
    config: dict
    others: int  # its other files (tokenizer, config): saved again beside every copy of the weights


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


@dataclass(frozen=True)
class TrainingWrites:
    """A training stage's disk use: it reads recipe section `section`, starts from the weights of parent
    `start_from`, and its artifact is one full model (a LoRA merged in) whatever its finetuning_type when
    `full_model`."""
    section: str
    start_from: str
    full_model: bool = False

    def estimate(self, recipe: Any, parents: dict[str, Path]) -> Estimate | None:
        model = model_at(parents[self.start_from]) if self.start_from in parents else None
        if model is None:
            return None
        cfg = getattr(recipe, self.section)
        train = trainable(model, cfg)
        adapter = cfg.finetuning_type in ("lora", "dora")
        saved = (4 * train if adapter else model.weights) + model.others
        checkpoint = saved + 8 * train + STATE_FILES
        kept = max(cfg.save_total_limit or 2, 2)
        artifact = (model.weights if self.full_model or not adapter else 4 * train) + model.others
        return Estimate(kept * checkpoint + artifact,
                        f"{kept} checkpoints x {gb(checkpoint)} (weights + Adam state of {train:,} trainable "
                        f"parameters) + the artifact {gb(artifact)}", checkpoints=True)


@dataclass(frozen=True)
class ExportWrites:
    """An export's disk use: the weights of parent `source` times `times`, or (None) P bytes for a 4-bit export."""
    source: str
    times: float | None = 1.0

    def estimate(self, recipe: Any, parents: dict[str, Path]) -> Estimate | None:
        model = model_at(parents[self.source]) if self.source in parents else None
        if model is None:
            return None
        size = (int(model.weights * self.times) if self.times else model.parameters) + model.others
        return Estimate(size, f"the exported model {gb(size)}")
