"""The ppo stage's section (LLaMA-Factory's stage ppo): the shared training keys, LLaMA-Factory's ppo_* keys, its
generating arguments, and where the reward model comes from.

Defaults are LLaMA-Factory's (its FinetuningArguments and GeneratingArguments, and trl<=0.9's PPOConfig which it
fills) unless a description says otherwise."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.recipe.fields import Float, Int, check_threshold
from engine.recipe.training import TrainSection, learning_rate_field


class PpoSection(TrainSection):
    """Online RL from the SFT model (LLaMA-Factory's stage ppo): a new LoRA and a value head trained by PPO against
    a reward model's scores of the policy's own completions, with a per-token KL penalty to the starting model."""
    learning_rate: Float = learning_rate_field(1e-4)
    per_device_train_batch_size: Int = Field(4, ge=1, description="prompts per rollout batch on each process. "
                                                                  "LLaMA-Factory's default (transformers'): 8")
    reward_model: str | None = Field(
        None, description="LLaMA-Factory's key: the reward model, a local sequence-classification checkpoint folder "
        "(its content is fingerprinted, its path is not). Unset with rm in the recipe's stages: the graph's "
        "reward_model asset")
    reward_model_type: Literal["full", "lora", "api"] = Field(
        "full", description="LLaMA-Factory's key: full (a sequence-classification checkpoint) is the one supported; "
        "lora and api are refused when the stage runs")
    ppo_buffer_size: Int = Field(1, ge=1, description="LLaMA-Factory's key: rollout batches gathered per PPO "
                                                      "optimisation (mini-batch = per_device_train_batch_size)")
    ppo_epochs: Int = Field(4, ge=1, description="LLaMA-Factory's key: passes over each buffer of rollouts")
    ppo_score_norm: bool = Field(False, description="LLaMA-Factory's key: normalise the reward model's scores by "
                                                    "their running mean and standard deviation")
    ppo_target: Float = Field(6.0, gt=0, description="LLaMA-Factory's key: the target KL of the adaptive KL "
                                                     "controller")
    ppo_whiten_rewards: bool = Field(False, description="LLaMA-Factory's key: whiten the per-token rewards before "
                                                        "the advantages are computed")
    init_kl_coef: Float = Field(0.2, ge=0, description="trl PPOConfig's key (LLaMA-Factory leaves it at 0.2): the "
                                                       "KL penalty's starting coefficient")
    adap_kl_ctrl: bool = Field(True, description="trl PPOConfig's key: adapt the KL coefficient toward ppo_target "
                                                 "(false: fixed at init_kl_coef)")
    gamma: Float = Field(1.0, ge=0, le=1, description="trl PPOConfig's key: the discount of GAE")
    lam: Float = Field(0.95, ge=0, le=1, description="trl PPOConfig's key: the lambda of GAE")
    cliprange: Float = Field(0.2, gt=0, description="trl PPOConfig's key: the clip range of the policy ratio")
    cliprange_value: Float = Field(0.2, gt=0, description="trl PPOConfig's key: the clip range of the value "
                                                          "function")
    vf_coef: Float = Field(0.1, ge=0, description="trl PPOConfig's key: the value loss's weight")
    max_new_tokens: Int = Field(64, ge=1, description="LLaMA-Factory's generating key: tokens a rollout generates. "
                                                      "LLaMA-Factory's default: 1024")
    do_sample: bool = Field(True, description="LLaMA-Factory's generating key: sample (false: greedy)")
    temperature: Float = Field(0.95, gt=0, description="LLaMA-Factory's generating key: the sampling temperature")
    top_p: Float = Field(0.7, gt=0, le=1, description="LLaMA-Factory's generating key: nucleus sampling's mass")
    top_k: Int = Field(50, ge=0, description="LLaMA-Factory's generating key: sample from the k likeliest tokens "
                                             "(0: all)")
    min_reward_gain: Float = check_threshold(0.0, description="gate: the PPO model's mean reward-model score minus "
                                                              "SFT's must be at least this (0: PPO not worse than "
                                                              "SFT)")

    @model_validator(mode="after")
    def supported_reward_model(self):
        if self.reward_model_type != "full":
            raise ValueError(f"reward_model_type {self.reward_model_type}: only full (a sequence-classification "
                             "checkpoint folder, or the graph's reward_model) is supported")
        return self
