"""How a training stage trains: the arguments every TRL config shares (from the recipe's training keys and the
device and precision policy), the optimizer (LoRA+ when asked), the autocast its steps run under, and the check
that the speed levers the recipe asks for (attention kernel, Liger kernels) work here."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft.optimizers import create_loraplus_optimizer

from engine.errors import RecipeError
from engine.models.device import Device, Precision, device_type, here, mixed_precision
from engine.train.sharding import Sharding

if TYPE_CHECKING:
    from engine.recipe import TrainSection

SCRATCH_DIR = "_trainer"  # the trainer's checkpoints, inside the stage's work directory; gone once it is saved


def trainer_kwargs(cfg: TrainSection, out: Path, precision: Precision | None = None,
                   sharding: Sharding = Sharding()) -> dict:
    """Arguments shared by every stage's TRL config, from the recipe's training keys, the device and precision
    policy (engine/models/device.py) and the sharding (DeepSpeed or FSDP2 config, engine/train/sharding.py); scratch
    goes to out/_trainer. The trainer counts the tokens it trains on (not padding) for the stage's tokens_per_second
    (engine/train/report.py)."""
    return dict(
        output_dir=str(out / SCRATCH_DIR), report_to=cfg.report_to, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=None,  # cfg.save_total_limit is kept by checkpoints.rotate, which knows complete ones
        gradient_checkpointing=cfg.gradient_checkpointing, use_liger_kernel=cfg.enable_liger_kernel,
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=True, include_num_input_tokens_seen="non_padding",
        **mixed_precision(precision or Precision()), **sharding.trainer_kwargs(),
    )


def optimizers(model, cfg: TrainSection) -> tuple:
    """LoRA+ (PEFT's optimizer with the B matrices at loraplus_lr_ratio x the learning rate), else the trainer's own."""
    if not cfg.loraplus_lr_ratio:
        return (None, None)
    optimizer = create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=cfg.learning_rate,
                                          loraplus_lr_ratio=cfg.loraplus_lr_ratio)
    return (optimizer, None)


def training_autocast(args):
    """The autocast a trainer with these arguments trains under (bf16 or fp16 AMP), for work done outside its
    steps; nothing without AMP."""
    if not (args.bf16 or args.fp16):
        return contextlib.nullcontext()
    return torch.autocast(device_type(), dtype=torch.bfloat16 if args.bf16 else torch.float16)


def gpu_package(package: str, on: Device) -> bool:
    """A package that only a GPU uses (flash-attn, liger-kernel, bitsandbytes) is there: importable here, or, on a
    declared accelerator, taken as in the pod's image, which checks it itself where it loads the model."""
    return on.declared or importlib.util.find_spec(package) is not None


def check_speed_levers(cfg: TrainSection, key: str, on: Device | None = None) -> None:
    """The attention kernel and Liger kernels the recipe asks for must work where the stage trains (`on`, default
    here): say so before any work starts."""
    on = on or here()
    cuda, where = on.type == "cuda", f" on {on.describe()}" if on.declared else ""
    if cfg.attn_implementation == "flash_attention_2" and not (gpu_package("flash_attn", on) and cuda):
        raise RecipeError(f"{key}.attn_implementation flash_attention_2 needs the flash-attn package and a CUDA GPU "
                          f"(flash-attn installed: {gpu_package('flash_attn', on)}, GPU: {cuda}{where}); use sdpa")
    if cfg.attn_implementation == "flex_attention" and not cuda:
        raise RecipeError(f"{key}.attn_implementation flex_attention trains on a GPU only (PyTorch's FlexAttention has "
                          f"no backward pass on a CPU{where}); use sdpa")
    if cfg.enable_liger_kernel and not (gpu_package("liger_kernel", on) and cuda):
        raise RecipeError(f"{key}.enable_liger_kernel needs the liger-kernel package and a CUDA GPU (installed: "
                          f"{gpu_package('liger_kernel', on)}, GPU: {cuda}{where}); set it to false")
