"""Pieces every training stage shares: LoRA config, trainer arguments, metrics from the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig

from engine.recipe import TrainSection


def lora_config(cfg: TrainSection, task_type: str) -> LoraConfig:
    """LLaMA-Factory's lora_target: "all" means every linear layer, else comma-separated module names."""
    targets = "all-linear" if cfg.lora_target == "all" else [t.strip() for t in cfg.lora_target.split(",")]
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task_type)


def trainer_kwargs(cfg: TrainSection, work_dir: Path) -> dict:
    """Arguments shared by SFTConfig, RewardConfig and DPOConfig, from the recipe's training keys."""
    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(work_dir), learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(), remove_unused_columns=True,
    )


def loss_curve(trainer) -> list[dict]:
    return [{"step": h["step"], "loss": round(h["loss"], 4)} for h in trainer.state.log_history if "loss" in h]


def finish(trainer, work_dir: Path) -> dict:
    """Run summary shared by all stages; removes the trainer's scratch directory."""
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"steps": trainer.state.global_step, "loss_curve": loss_curve(trainer),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def without_row_ids(dataset):
    return dataset.remove_columns([c for c in ("row_id",) if c in dataset.column_names])
