"""The `grpo` section: online RL with TRL's GRPOTrainer on the SFT view's prompts (LLaMA-Factory has no GRPO stage;
its key names are used where it has one: the shared training keys, and TRL's otherwise)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from engine.recipe.fields import Float, Int, Section, check_threshold
from engine.recipe.training import TrainSection, learning_rate_field


class GrpoReward(Section):
    """One reward term: what scores a completion, and its weight in the total."""
    type: Literal["reward_model", "exact_match", "format", "length", "scorer"] = Field(
        description="reward_model (the graph's reward_model; rm must be in stages), exact_match (1 when the completion "
        "equals the row's reference answer), format (1 when the completion matches `pattern`), length (1 at "
        "`target_chars` characters, falling linearly to 0 at twice or zero that), or scorer (the user's "
        "`module:function` named in `scorer`, as evaluation.scorer)")
    weight: Float = Field(1.0, description="its weight in the total reward (TRL's reward_weights)")
    pattern: str | None = Field(None, description="format: the regex the whole completion must match "
                                                   "(re.fullmatch, DOTALL)")
    target_chars: Int | None = Field(None, ge=1, description="length: the completion length (characters) that "
                                                             "scores 1")
    scorer: str | None = Field(None, description='scorer: "module:function" taking (prediction, reference) and '
                                                 "returning a number in [0, 1], importable from the working directory")

    @model_validator(mode="after")
    def options_of_its_type(self):
        needs = {"format": "pattern", "length": "target_chars", "scorer": "scorer"}
        for kind, key in needs.items():
            given = getattr(self, key) is not None
            if self.type == kind and not given:
                raise ValueError(f"a {kind} reward needs `{key}`")
            if self.type != kind and given:
                raise ValueError(f"`{key}` belongs to a {kind} reward, not to a {self.type} one")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regex ({exc})") from None
        return self


class GrpoSection(TrainSection):
    """Group Relative Policy Optimization (TRL's GRPOTrainer) from the SFT model (and DPO's, where dpo runs): each
    prompt's num_generations completions are scored by `rewards`, and each is pushed up or down by how it scored
    against its group."""
    learning_rate: Float = learning_rate_field(1e-4)
    per_device_train_batch_size: Int = Field(16, ge=1, description="completions per batch on each process (TRL "
                                                                   "counts completions, not prompts: a multiple of "
                                                                   "num_generations). LLaMA-Factory's default "
                                                                   "(transformers'): 8")
    num_generations: Int = Field(8, ge=2, description="TRL's key: completions sampled per prompt (the group each is "
                                                      "compared with)")
    beta: Float = Field(0.0, ge=0, description="TRL's key: weight of the KL term to the reference model (the "
                                               "starting model); 0 (TRL's default) loads no reference")
    max_completion_length: Int = Field(32, ge=1, description="TRL's key: the most tokens sampled per completion. "
                                                             "TRL's default: 256")
    temperature: Float = Field(1.0, gt=0, description="TRL's key: the sampling temperature of the rollouts")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="TRL's key: grpo (per-sequence length normalisation), dr_grpo (a constant: "
        "max_completion_length) or dapo (the batch's completion tokens; TRL's default)")
    rewards: list[GrpoReward] = Field(
        default_factory=lambda: [GrpoReward(type="exact_match")],
        description="the reward terms, summed with their weights; each is also logged on its own")
    rollout_rows: Int = Field(2000, ge=0, description="at most this many rollouts (prompt, completion, each reward, "
                                                      "total) kept in the artifact's rollouts.parquet, evenly over "
                                                      "the steps")
    min_exact_match_gain: Float = check_threshold(
        0.0, description="gate grpo_not_worse_than_sft: GRPO's held-out task accuracy minus SFT's must be at least "
        "this (and its reward-model score, where rm runs, at least min_reward_gain above SFT's)")
    min_reward_gain: Float = check_threshold(0.0, description="gate grpo_not_worse_than_sft: GRPO's mean reward-model "
                                                              "score minus SFT's must be at least this (where rm "
                                                              "runs)")

    @field_validator("rewards")
    @classmethod
    def some_reward(cls, rewards: list[GrpoReward]) -> list[GrpoReward]:
        if not rewards:
            raise ValueError("name at least one reward (e.g. [{type: exact_match}])")
        return rewards

    @model_validator(mode="after")
    def whole_groups(self):
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(f"per_device_train_batch_size x gradient_accumulation_steps ({batch}) must be a multiple "
                             f"of num_generations ({self.num_generations}): TRL groups each prompt's completions "
                             "in one batch")
        return self

    def uses_reward_model(self) -> bool:
        return any(r.type == "reward_model" for r in self.rewards)
