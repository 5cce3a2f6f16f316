"""Reward modelling: TRL RewardTrainer, a sequence-classification head scoring whole conversations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

from engine.data.format import read_view
from engine.models.device import Precision, precision_metrics, train_dtype
from engine.evaluate.measure import pairwise_accuracy
from engine.models.load import load_reward_model, load_tokenizer, model_dir
from engine.train.accounting import trained_examples
from engine.train.adapters import load_trainable, prepare_model
from engine.train.arguments import optimizers, trainer_kwargs
from engine.train.sharding import Sharding, sharding_of
from engine.train.skeleton import TrainingStage, train_stage, without_row_ids

if TYPE_CHECKING:
    from engine.recipe import RewardSection
    from engine.stage import StageRun


def train_reward(base_dir: Path, formatted_dir: Path, cfg: RewardSection, cutoff_len: int, out: Path,
                 precision: Precision | None = None, say: Callable[[str], None] = print,
                 sharding: Sharding = Sharding()) -> dict:
    """Train and save a full reward model in `out` (a LoRA is merged in). Returns held-out pairwise accuracy."""
    tokenizer = load_tokenizer(base_dir)
    data = read_view(formatted_dir, "preference", "reward_model")

    def set_up():
        args = RewardConfig(**trainer_kwargs(cfg, out, precision, sharding), max_length=cutoff_len)
        model = load_trainable(base_dir, cfg, AutoModelForSequenceClassification, precision=precision,
                               sharding=sharding, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        model = prepare_model(model, cfg, "SEQ_CLS", precision)
        return RewardTrainer(model=model, args=args, train_dataset=without_row_ids(data["train"]),
                             processing_class=tokenizer, optimizers=optimizers(model, cfg))

    def accuracy(model) -> float:
        return round(pairwise_accuracy(model, tokenizer, data["eval"]), 4)

    return train_stage(TrainingStage(
        "reward", cfg, out, tokenizer, set_up, merged=True,
        # partitioned weights (ZeRO-3, FSDP) score only inside the trainer's steps: not measured there
        before=lambda t: {"eval_accuracy_before": None if sharding.partitions_weights else accuracy(t.model)},
        after=lambda t: {**trained_examples(t, len(data["train"]), "pairs"), "eval_pairs": len(data["eval"])},
        # sharded, the full-weights model is on disk only
        on_saved=lambda merged: {"eval_accuracy": accuracy(load_reward_model(out) if merged is None else merged)},
        sharding=sharding), say)


def train_reward_model(run: "StageRun") -> dict:
    """reward_model's entry point."""
    precision = Precision.of(run.recipe.model)
    return {**train_reward(model_dir(run.inputs["pt_model"]), run.inputs["formatted_data"], run.recipe.reward,
                           run.recipe.data.cutoff_len, run.out, precision, run.log, sharding_of(run.recipe, "reward")),
            **precision_metrics(train_dtype(precision))}
