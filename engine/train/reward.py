"""Reward modelling: TRL RewardTrainer, a sequence-classification head scoring whole conversations."""

from __future__ import annotations

from pathlib import Path

from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

from engine.evaluate import pairwise_accuracy
from engine.models import load_tokenizer
from engine.recipe import RewardSection
from engine.train.common import finish, lora_config, trainer_kwargs, without_row_ids


def train_reward(base_dir: Path, formatted_dir: Path, cfg: RewardSection, cutoff_len: int, out: Path) -> dict:
    """Train, merge the LoRA into a full reward model saved in `out`. Returns held-out pairwise accuracy."""
    tokenizer = load_tokenizer(base_dir)
    data = load_from_disk(formatted_dir / "preference")
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, trust_remote_code=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**trainer_kwargs(cfg, out / "_trainer"), max_length=cutoff_len)
    trainer = RewardTrainer(model=model, args=args, train_dataset=without_row_ids(data["train"]),
                            processing_class=tokenizer, peft_config=lora_config(cfg, "SEQ_CLS"))
    accuracy_before = pairwise_accuracy(trainer.model, tokenizer, data["eval"])
    result = trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {**finish(trainer, out / "_trainer"), "train_loss": round(result.training_loss, 4),
            "eval_accuracy_before": round(accuracy_before, 4),
            "eval_accuracy": round(pairwise_accuracy(merged, tokenizer, data["eval"]), 4),
            "train_pairs": len(data["train"]), "eval_pairs": len(data["eval"])}
