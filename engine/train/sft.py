"""Supervised fine-tuning: TRL SFTTrainer with a LoRA adapter, loss on assistant tokens only."""

from __future__ import annotations

from pathlib import Path

from datasets import load_from_disk
from trl import SFTConfig, SFTTrainer

from engine.models import load_causal_lm, load_tokenizer
from engine.recipe import SftSection
from engine.train.common import finish, lora_config, trainer_kwargs, without_row_ids


def train_sft(base_dir: Path, formatted_dir: Path, cfg: SftSection, cutoff_len: int, out: Path) -> dict:
    """Train and save the adapter to `out/adapter`. Returns eval loss before/after, loss curve, tokens/s."""
    tokenizer = load_tokenizer(base_dir)
    data = load_from_disk(formatted_dir / "sft")
    train, evaluation = without_row_ids(data["train"]), without_row_ids(data["eval"])
    # the SFT view is pre-tokenized with labels already masked: TRL uses them as they are
    args = SFTConfig(**trainer_kwargs(cfg, out / "_trainer"), max_length=cutoff_len)
    trainer = SFTTrainer(model=load_causal_lm(base_dir), args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=lora_config(cfg, "CAUSAL_LM"))
    before = trainer.evaluate()["eval_loss"]  # LoRA starts as a no-op: this is the base model's loss
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    tokens = sum(len(ids) for ids in train["input_ids"]) * cfg.num_train_epochs
    return {**finish(trainer, out / "_trainer"), "eval_loss_before": round(before, 4), "eval_loss_after": round(after, 4),
            "train_loss": round(result.training_loss, 4), "train_rows": len(train), "eval_rows": len(evaluation),
            "tokens_per_second": round(tokens / result.metrics["train_runtime"], 1)}
