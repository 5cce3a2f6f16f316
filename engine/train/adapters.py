"""What a training stage trains: a LoRA or DoRA adapter, all weights (full), the last or first decoder layers
(freeze), or an adapter on a bitsandbytes-quantized base (QLoRA); the model it starts from, and the checks of
those keys that run before any work."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, get_peft_model

from engine.errors import RecipeError
from engine.models.attention import training_attention
from engine.models.device import (Device, Precision, device, here, load_kwargs, train_dtype, upcast_trainable,
                                  upcast_trainable_parameters)
from engine.train.arguments import check_speed_levers, gpu_package
from engine.train.sharding import Sharding

if TYPE_CHECKING:
    from engine.recipe import TrainSection


def is_adapter(cfg: TrainSection) -> bool:
    return cfg.finetuning_type in ("lora", "dora")


def lora_config(cfg: TrainSection, task_type: str) -> LoraConfig:
    """LLaMA-Factory's lora_target: "all" means every linear layer, else comma-separated module names."""
    targets = "all-linear" if cfg.lora_target == "all" else [t.strip() for t in cfg.lora_target.split(",")]
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task_type, use_dora=cfg.finetuning_type == "dora")


def check_lora_targets(recipe, stages: tuple[str, ...] = ("pt", "sft", "reward", "dpo")) -> None:
    """Each named lora_target (PEFT's rule: a module name or its dotted suffix) must be a module of the recipe's
    model: a misspelt one would otherwise leave those layers untrained without a word."""
    names = None
    for stage in stages:
        cfg = getattr(recipe, stage)
        if not is_adapter(cfg) or cfg.lora_target == "all":
            continue
        if names is None:
            from engine.models.load import module_names
            names = module_names(recipe.model) or {}
        if not names:
            return  # transformers cannot build this architecture from its config: PEFT checks at training
        targets = [t.strip() for t in cfg.lora_target.split(",") if t.strip()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, kind in names.items() if kind == "Linear"})
            raise RecipeError(f"{stage}.lora_target: {', '.join(missing)} is not a module of the model (its linear "
                              f"layers: {', '.join(linear)}; or 'all')")


def check_quantized_training(cfg: TrainSection, key: str, on: Device | None = None) -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU where the stage trains (`on`, default here): say so before any work
    starts."""
    if cfg.quantization_bit is None:
        return
    on = on or here()
    if not (gpu_package("bitsandbytes", on) and on.type == "cuda"):
        where = on.describe() if on.declared else "this machine"
        raise RecipeError(f"{key}.quantization_bit {cfg.quantization_bit} (QLoRA) needs bitsandbytes and a CUDA GPU "
                          f"(bitsandbytes installed: {gpu_package('bitsandbytes', on)}, "
                          f"GPU: {on.type == 'cuda'}); remove it to train a plain LoRA on {where}")


def quantized_load_kwargs(cfg: TrainSection, precision: Precision | None = None,
                          sharding: Sharding = Sharding()) -> dict:
    """from_pretrained arguments for a QLoRA base: bitsandbytes NF4 (or 8-bit) weights, computing in the policy's
    training dtype (on a GPU: bf16 where supported, else fp16, unless the recipe says). Under ZeRO-3/FSDP no
    device_map and 4-bit weights stored in the compute dtype, so that they shard (LLaMA-Factory's rule)."""
    if cfg.quantization_bit is None:
        return {}
    from transformers import BitsAndBytesConfig
    dtype = train_dtype(precision or Precision())
    if cfg.quantization_bit == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype,
                                    **({"bnb_4bit_quant_storage": dtype} if sharding.partitions_weights else {}))
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, **({} if sharding.partitions_weights else {"device_map": {"": device()}})}


def placed(dtype: torch.dtype, sharding: Sharding) -> dict:
    """from_pretrained's dtype and placement for a trainable model: on this rank's device, or, where ZeRO-3/FSDP
    partition the weights, no device_map (they place the shards; LLaMA-Factory's rule)."""
    return {"dtype": dtype} if sharding.partitions_weights else load_kwargs(dtype)


def load_trainable(model_dir: Path, cfg: TrainSection, model_class=None, *, precision: Precision | None = None,
                   sharding: Sharding = Sharding(), **kwargs):
    """The model a stage starts from (a causal LM unless `model_class` says otherwise) on the policy's device (none
    under ZeRO-3/FSDP: see placed), its frozen weights in the policy's training dtype, or quantized by bitsandbytes
    when the recipe asks for QLoRA. Build the trainer's arguments first: ZeRO-3 partitions the weights as they load
    only where they exist (transformers' zero.Init)."""
    from transformers import AutoModelForCausalLM, set_seed
    set_seed(cfg.seed)  # a new head (the reward model's score) comes from the recipe's seed, in any process
    model_class = model_class or AutoModelForCausalLM
    precision = precision or Precision()
    if cfg.quantization_bit is None:
        return model_class.from_pretrained(model_dir, trust_remote_code=False,
                                           **placed(train_dtype(precision), sharding), **kwargs)
    check_quantized_training(cfg, "training")
    from peft import prepare_model_for_kbit_training
    model = model_class.from_pretrained(model_dir, trust_remote_code=False, dtype=train_dtype(precision),
                                        **quantized_load_kwargs(cfg, precision, sharding), **kwargs)
    return prepare_model_for_kbit_training(model)


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not layers:
        raise RecipeError("finetuning_type freeze: the model has no list of decoder layers to choose from")
    return max(layers, key=len)


def prepare_model(model, cfg: TrainSection, task_type: str, precision: Precision | None = None):
    """The model as it trains: wrapped in a LoRA/DoRA adapter, all weights trainable (full), or all frozen but
    `freeze_trainable_layers` decoder layers and, for a reward model, its score head (freeze). Trainable weights
    are float32 unless the recipe says pure_bf16 (frozen ones stay in the dtype they were loaded in)."""
    from transformers import set_seed
    set_seed(cfg.seed)  # the adapter's initial weights, whichever way the model was loaded (DPO: SFT merged in)
    check_speed_levers(cfg, "training")
    # however it was loaded (DPO: the SFT model merged); sdpa trains as the row attention (engine/models/attention.py)
    model.set_attn_implementation(training_attention(cfg.attn_implementation, model))
    upcast = upcast_trainable(precision or Precision())
    if is_adapter(cfg):
        model = get_peft_model(model, lora_config(cfg, task_type), autocast_adapter_dtype=upcast)
        if upcast:
            upcast_trainable_parameters(model)  # a reward model's new score head, too
        return model
    model.requires_grad_(True)  # a model with an adapter merged in comes back frozen
    if cfg.finetuning_type == "freeze":
        layers = decoder_layers(model)
        n = cfg.freeze_trainable_layers
        if abs(n) > len(layers):
            raise RecipeError(f"freeze_trainable_layers {n}: the model has only {len(layers)} decoder layers")
        chosen = layers[-n:] if n > 0 else layers[:-n]
        model.requires_grad_(False)
        chosen.requires_grad_(True)
        head = getattr(model, "score", None)
        if head is not None:
            head.requires_grad_(True)
    if upcast:
        upcast_trainable_parameters(model)
    return model
