"""The training stages' sections: the keys every trainer shares (TrainSection, LLaMA-Factory's finetuning and
transformers' training keys), and pt, sft, reward (LLaMA-Factory's rm) and dpo (also kto) on top of it.

Where a default differs from LLaMA-Factory's (which takes transformers' TrainingArguments defaults), the field's
description says so with LLaMA-Factory's value."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from engine.recipe.fields import Float, Int, Section, check_threshold, operational

IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
LORA_TARGET = re.compile(rf"all|{IDENTIFIER}(\.{IDENTIFIER})*(\s*,\s*{IDENTIFIER}(\.{IDENTIFIER})*)*")

# LLaMA-Factory's stage names. pt runs whenever pt.dataset names a corpus (naming pt here then only confirms it)
StageName = Literal["pt", "sft", "rm", "dpo", "kto", "ppo", "grpo"]


def _lora_target_syntax(value: str) -> str:
    """"all", or comma-separated module names (PEFT matches each as a name suffix); which names the model has
    is checked when the model is loaded."""
    if not LORA_TARGET.fullmatch(value.strip()) or (value.strip() != "all" and "all" in
                                                     [t.strip() for t in value.split(",")]):
        raise ValueError('expected "all" or comma-separated module names such as "q_proj,v_proj"')
    return value.strip()


def _scheduler_type(value: str) -> str:
    from transformers.trainer_utils import SchedulerType  # imported only when a recipe names one: it loads torch
    names = [s.value for s in SchedulerType]
    if value not in names:
        raise ValueError(f"expected one of transformers' schedulers: {', '.join(names)}")
    return value


def learning_rate_field(default: float) -> float:
    return Field(default, gt=0, description="the peak learning rate (AdamW). LLaMA-Factory's default (transformers'): "
                                            "5e-5")


class TrainSection(Section):
    """What every training stage reads: the fine-tuning method, LoRA, and transformers' training arguments."""
    finetuning_type: Literal["lora", "dora", "full", "freeze"] = Field(
        "lora", description="LLaMA-Factory's key: lora, dora (LoRA with weight decomposition, LLaMA-Factory's "
        "use_dora), full (every weight trains) or freeze (only freeze_trainable_layers train)")
    freeze_trainable_layers: Int = Field(2, description="LLaMA-Factory's key, for finetuning_type freeze: train the "
                                                        "last n decoder layers (negative: the first n)")
    quantization_bit: Literal[4, 8] | None = Field(
        None, description="LLaMA-Factory's key: QLoRA, the frozen base loaded in 4 or 8 bits by bitsandbytes (a CUDA "
        "GPU; lora or dora only); unset: the base in its training dtype")
    lora_rank: Int = Field(16, ge=1, description="LLaMA-Factory's key: the rank of each LoRA update. "
                                                 "LLaMA-Factory's default: 8")
    lora_alpha: Int = Field(32, ge=1, description="LLaMA-Factory's key: LoRA's scale numerator (updates scale by "
                                                  "lora_alpha / lora_rank). LLaMA-Factory's default: unset, meaning "
                                                  "lora_rank x 2 (16 at its rank 8)")
    lora_dropout: Float = Field(0.0, ge=0, lt=1, description="LLaMA-Factory's key: dropout on the LoRA input")
    lora_target: Annotated[str, AfterValidator(_lora_target_syntax)] = Field(
        "all", description='LLaMA-Factory\'s key: "all" (every linear layer but the output head) or comma-separated '
        "module names (PEFT matches each as a name suffix; the names are checked against the model when it loads)")
    loraplus_lr_ratio: Float | None = Field(None, gt=0, description="LLaMA-Factory's key: LoRA+, the B matrices learn "
                                                                    "this many times faster than A; unset: off")
    report_to: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(
        "none", description="transformers' key: where training metrics go besides the artifact's own: tensorboard "
        "(a tensorboard/ folder in the artifact), mlflow (an mlflow.db in it) or wandb (Weights & Biases: a wandb/ "
        "folder in it, offline unless WANDB_API_KEY is set or WANDB_MODE says otherwise)")
    learning_rate: Float = learning_rate_field(1e-3)
    num_train_epochs: Float = Field(1.0, gt=0, description="passes over the train split (a fraction stops early). "
                                                           "LLaMA-Factory's default (transformers'): 3.0")
    max_steps: Int = Field(-1, description="optimizer steps to train, overriding num_train_epochs; -1: "
                                           "num_train_epochs decides")
    per_device_train_batch_size: Int = Field(16, ge=1, description="rows per batch on each process. LLaMA-Factory's "
                                                                   "default (transformers'): 8")
    gradient_accumulation_steps: Int = Field(1, ge=1, description="batches per optimizer step")
    lr_scheduler_type: Annotated[str, AfterValidator(_scheduler_type)] = Field(
        "cosine", description="one of transformers' SchedulerType names (linear, cosine, constant, ...). "
        "LLaMA-Factory's default (transformers'): linear")
    warmup_ratio: Float = Field(0.05, ge=0, lt=1, description="the share of training steps the learning rate warms "
                                                              "up over. LLaMA-Factory's default (transformers'): 0 "
                                                              "(no warmup)")
    logging_steps: Int = Field(10, ge=1, description="optimizer steps between logged losses. LLaMA-Factory's default "
                                                     "(transformers'): 500")
    seed: Int = Field(42, description="seed of the trainer: initial adapter weights, dropout, batch order")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: saves memory, costs 20-50% time "
        "(bench/train_throughput.py measures it). LLaMA-Factory turns it on by default "
        "(disable_gradient_checkpointing: false), as TRL's configs do")
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = Field(
        "sdpa", description="the attention kernel (transformers' attn_implementation); flash_attention_2 needs a "
        "CUDA GPU and flash-attn. LLaMA-Factory names it flash_attn, default auto")
    enable_liger_kernel: bool = Field(False, description="LLaMA-Factory's key: Liger's fused kernels (liger-kernel, a "
                                                         "CUDA GPU)")
    save_steps: Int = operational(500, ge=1, description="operational: a checkpoint every save_steps optimizer steps; "
                                                         "a run that dies resumes from the last complete one")
    save_total_limit: Int | None = operational(
        2, ge=1, description="operational: at most this many checkpoints on disk while training, the one being "
        "written included (transformers deletes after writing, holding one more while saving); the last complete "
        "one, which a resume needs, is never deleted (so 1 means 2 while saving); null: all. LLaMA-Factory's "
        "default (transformers'): null")

    @model_validator(mode="after")
    def adapter_options_need_an_adapter(self):
        adapter = self.finetuning_type in ("lora", "dora")
        if self.freeze_trainable_layers == 0:
            raise ValueError("freeze_trainable_layers: 0 trains nothing; use n > 0 (last n layers) or n < 0 (first n)")
        if self.quantization_bit and not adapter:
            raise ValueError(f"quantization_bit (QLoRA) trains an adapter on a frozen quantized base: it needs "
                             f"finetuning_type lora or dora, not {self.finetuning_type}")
        if self.loraplus_lr_ratio and not adapter:
            raise ValueError(f"loraplus_lr_ratio needs finetuning_type lora or dora, not {self.finetuning_type}")
        return self


class PtSection(TrainSection):
    """Continued pre-training on raw text before SFT (LLaMA-Factory's stage pt). Off while `dataset` is empty."""
    dataset: list[str] = Field(default_factory=list, description="registry names of the raw-text corpus; each row's "
                                                                 "`prompt` column is the text; empty: pt is off")
    learning_rate: Float = learning_rate_field(5e-4)


class SftSection(TrainSection):
    """Supervised fine-tuning on the chat rows (LLaMA-Factory's stage sft)."""
    padding_free: bool | None = Field(
        None, description="each batch's rows laid end to end in one sequence with per-row positions, no padding: "
        "the same rows in the same order as padded batches, the same losses (tests/test_packing.py), none of the "
        "padding's compute. Unset: on with flash_attention_2 (its varlen kernel attends within rows), and with "
        "sdpa/eager only where the flattened batch's attention (quadratic in the batch's tokens) costs less than "
        "the padding it saves (engine/train/sft.py)")
    packing: bool = Field(
        False, description="rows packed into cutoff_len sequences (best fit, none split), no padding; each attends "
        "to itself only. Off by default: it changes which rows share an optimizer step (LLaMA-Factory's "
        "neat_packing turns it on)")


class RewardSection(TrainSection):
    """The reward model on the preference pairs (LLaMA-Factory's stage rm)."""
    min_accuracy: Float = check_threshold(
        0.6, ge=0, le=1, description="check accuracy_above_bound: the held-out pairwise accuracy (chosen scored above "
        "rejected) must be above this. Chance is 0.5: a bound at or below it (a few-step smoke run) passes a model "
        "that learned nothing, and the check's detail says so")


class DpoSection(TrainSection):
    """Preference training from the SFT model (LLaMA-Factory's stage dpo; stage kto is this one with pref_loss kto)."""
    pref_beta: Float = Field(0.1, gt=0, description="LLaMA-Factory's key: the beta of the preference loss (how far "
                                                    "the policy may move from the reference model)")
    pref_loss: Literal["sigmoid", "ipo", "orpo", "kto"] = Field(
        "sigmoid", description="LLaMA-Factory's key: sigmoid (DPO), ipo, orpo, or kto (trains on the KTO view: "
        "kto_tag data)")
    pref_ftx: Float = Field(
        0.0, ge=0, description="LLaMA-Factory's key: weight of the SFT loss on the chosen answers added to "
        "sigmoid/ipo (TRL's \"sft\" loss), which keeps DPO from lowering the likelihood of the very answers it "
        "prefers. orpo's loss holds its own SFT term and TRL's kto has none: there it is not used (dpo_adapter's "
        "metrics say pref_ftx_applied: false)")
    learning_rate: Float = learning_rate_field(5e-4)
    min_reward_gain: Float = check_threshold(0.0, description="gate: the DPO model's mean reward-model score minus "
                                                              "SFT's must be at least this (0: DPO not worse than "
                                                              "SFT; a negative bound is a tolerance, which the "
                                                              "gate's detail line states)")
    min_reward_margin: Float = check_threshold(
        0.0, description="check reward_margin_above_bound: the held-out mean chosen-minus-rejected reward must be "
        "above this. Below 0 (a few-step smoke run) it passes a model that prefers the rejected answers, and the "
        "check's detail says so")
    precompute_ref_log_probs: bool = Field(
        True, description="the reference model's log-probs computed once, before training (sigmoid/ipo/kto), not at "
        "every step of every epoch. TRL's default: false")
