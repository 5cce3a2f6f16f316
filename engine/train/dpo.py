"""Preference optimisation on top of the SFT model, by the recipe's pref_loss: TRL's DPOTrainer (sigmoid, ipo),
ORPOTrainer (orpo, reference-free) or KTOTrainer (kto, on the KTO view of labelled single answers)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.models.device import Precision, precision_metrics, train_dtype
from engine.data.format import read_view
from engine.models.load import load_tokenizer, load_with_adapters, model_dir, trained_weights
from engine.train.accounting import trained_examples
from engine.train.adapters import is_adapter, load_trainable, prepare_model
from engine.train.arguments import optimizers, trainer_kwargs, training_autocast
from engine.train.lm_head import trains_on_labelled_positions
from engine.train.sharding import Sharding, sharding_of
from engine.train.skeleton import TrainingStage, train_stage, without_row_ids

if TYPE_CHECKING:
    from engine.recipe import DpoSection
    from engine.stage import StageRun


def unit_of(pref_loss: str) -> str:
    """What the preference stage trains on: labelled single answers for KTO, pairs otherwise."""
    return "rows" if pref_loss == "kto" else "pairs"


def starting_model(base_dir: Path, sft_weights: Path | None, cfg: DpoSection, out: Path,
                   precision: Precision | None = None, sharding: Sharding = Sharding()):
    """The SFT model DPO trains (without sft in the recipe, the base model), in the policy's training dtype; for
    QLoRA it is written out once and reloaded with its base quantized. Under ZeRO-3/FSDP it is merged on the CPU
    before the trainer's arguments exist (a LoRA cannot merge into weights ZeRO-3 partitions as they load); DeepSpeed
    or FSDP shard it when the trainer prepares it."""
    sft = [] if sft_weights is None else [sft_weights]
    model = load_with_adapters(base_dir, *sft, dtype=train_dtype(precision or Precision()),
                               cpu=sharding.partitions_weights)
    if cfg.quantization_bit is None:
        return model
    model.save_pretrained(out / "_trainer" / "sft_merged")
    return load_trainable(out / "_trainer" / "sft_merged", cfg, precision=precision, sharding=sharding)


def dpo_arguments(cfg: DpoSection, cutoff_len: int, out: Path, precision: Precision | None = None,
                  sharding: Sharding = Sharding()):
    """DPOTrainer's arguments (sigmoid, ipo) from the recipe's keys."""
    from trl import DPOConfig
    losses = {cfg.pref_loss: 1.0, **({"sft": cfg.pref_ftx} if cfg.pref_ftx else {})}
    return DPOConfig(**trainer_kwargs(cfg, out, precision, sharding), beta=cfg.pref_beta, max_length=cutoff_len,
                     loss_type=list(losses), loss_weights=list(losses.values()),
                     precompute_ref_log_probs=cfg.precompute_ref_log_probs)


def preference_trainer(model, reference, tokenizer, formatted_dir: Path, cfg: DpoSection, cutoff_len: int, out: Path,
                       precision: Precision | None = None, sharding: Sharding = Sharding()):
    """The TRL trainer for the recipe's pref_loss, with its held-out data. `reference` is the frozen SFT model,
    or None for an adapter (TRL then disables the adapter to get the reference)."""
    shared = {**trainer_kwargs(cfg, out, precision, sharding), "beta": cfg.pref_beta, "max_length": cutoff_len}
    if cfg.pref_loss == "kto":
        from trl import KTOConfig, KTOTrainer
        data = read_view(formatted_dir, "kto", "dpo_adapter")
        config = KTOConfig(**shared, precompute_ref_log_probs=cfg.precompute_ref_log_probs)
        with training_autocast(config):  # its reference pass, too, runs while it is built (see dpo_trainer)
            return KTOTrainer(model=model, ref_model=reference, args=config,
                              train_dataset=without_row_ids(data["train"]),
                              eval_dataset=without_row_ids(data["eval"]), processing_class=tokenizer,
                              optimizers=optimizers(model, cfg))
    data = read_view(formatted_dir, "preference", "dpo_adapter")
    train, evaluation = without_row_ids(data["train"]), without_row_ids(data["eval"])
    if cfg.pref_loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        # its batches carry chosen_/rejected_input_ids, no input_ids: transformers cannot count its tokens
        config = ORPOConfig(**{**shared, "include_num_input_tokens_seen": "no"})
        return ORPOTrainer(model=model, args=config, train_dataset=train, eval_dataset=evaluation,
                           processing_class=tokenizer, optimizers=optimizers(model, cfg))
    return dpo_trainer(model, reference, tokenizer, train, evaluation,
                       dpo_arguments(cfg, cutoff_len, out, precision, sharding), optimizers(model, cfg))


def dpo_trainer(model, reference, tokenizer, train, evaluation, args, optimizer_pair=(None, None)):
    """TRL's DPOTrainer, built under the autocast its training steps run in: with precompute_ref_log_probs it
    computes the reference log-probs while it is built, before the trainer enters its own autocast, and would
    otherwise make that pass in float32 (on a CPU with native bf16, 2.4x the cost of a training step's)."""
    from trl import DPOTrainer
    with training_autocast(args):
        return DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=train, eval_dataset=evaluation,
                          processing_class=tokenizer, optimizers=optimizer_pair)


def train_dpo(base_dir: Path, sft_weights: Path | None, formatted_dir: Path, cfg: DpoSection, cutoff_len: int,
              out: Path, precision: Precision | None = None, say: Callable[[str], None] = print,
              sharding: Sharding = Sharding()) -> dict:
    """Train and save to `out/adapter` (or `out/model`). Returns the held-out reward margin and accuracy.
    (The reward model's verdict on DPO against SFT is the evaluation assets' job, and the gate's.)"""
    tokenizer = load_tokenizer(base_dir)

    def set_up():
        model = prepare_model(starting_model(base_dir, sft_weights, cfg, out, precision, sharding), cfg, "CAUSAL_LM",
                              precision)
        # a full or freeze model needs its own frozen copy of the SFT model as reference (TRL would reload the base)
        sft = [] if sft_weights is None else [sft_weights]
        reference = None if is_adapter(cfg) or cfg.pref_loss == "orpo" else load_with_adapters(
            base_dir, *sft, dtype=train_dtype(precision or Precision()), cpu=sharding.partitions_weights).eval()
        return preference_trainer(model, reference, tokenizer, formatted_dir, cfg, cutoff_len, out, precision,
                                  sharding)

    def measures(trainer) -> dict:
        evaluation = trainer.evaluate()
        accuracy = evaluation.get("eval_rewards/accuracies")
        view = read_view(formatted_dir, "kto" if cfg.pref_loss == "kto" else "preference")
        return {"pref_loss": cfg.pref_loss, **trained_examples(trainer, len(view["train"]), unit_of(cfg.pref_loss)),
                "pref_ftx_applied": bool(cfg.pref_ftx) and cfg.pref_loss in ("sigmoid", "ipo"),
                "eval_reward_margin": round(evaluation["eval_rewards/margins"], 4),
                "eval_reward_accuracy": None if accuracy is None else round(accuracy, 4)}

    return train_stage(TrainingStage("dpo", cfg, out, tokenizer, set_up, after=measures,
                                     tracker_run=f"dpo-{cfg.pref_loss}", sharding=sharding), say)


@trains_on_labelled_positions
def train_dpo_adapter(run: "StageRun") -> dict:
    """dpo_adapter's entry point: on top of the SFT stage's weights (without sft in the recipe, of pt_model's)."""
    precision = Precision.of(run.recipe.model)
    sft = trained_weights(run.inputs["sft_adapter"]) if "sft_adapter" in run.inputs else None
    return {**train_dpo(model_dir(run.inputs["pt_model"]), sft,
                        run.inputs["formatted_data"], run.recipe.dpo, run.recipe.data.cutoff_len, run.out, precision,
                        run.log, sharding_of(run.recipe, "dpo")),
            **precision_metrics(train_dtype(precision))}
