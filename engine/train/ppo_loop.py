"""PPO's algorithm, written here because the pinned TRL (1.16) has no PPOTrainer (LLaMA-Factory's CustomPPOTrainer
subclasses trl<=0.9's). It follows trl 0.9's PPOTrainer, which LLaMA-Factory drives: per-token rewards (minus the KL
to the reference, plus the score on the last token), GAE, clipped policy and value losses, an adaptive KL controller.

The policy is a causal LM (a LoRA on the starting model) with a value head on its last hidden states
(PolicyWithValueHead, as trl's AutoModelForCausalLMWithValueHead); the reference is the same model with the adapter
disabled. PpoTrainer is a transformers Trainer whose training_step is one PPO iteration, so the stage skeleton's
checkpoints, resume, logging and callbacks work unchanged."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from engine.errors import TunelineError

PPO_STATE = "ppo_state.json"  # in each checkpoint: what a resumed run needs besides the weights and optimizer


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """x scaled to unit variance over the masked positions (and centred, unless shift_mean is False)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over each row's completion tokens (mask 1); (advantages, returns), where
    returns = advantages + values. Positions past a row's end contribute nothing."""
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device, dtype=rewards.dtype)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float):
    """(rewards, kl): each completion token's reward is -kl_coef x (logprob - ref_logprob); the row's score is added
    on its last completion token (as trl's compute_rewards)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & (mask > 0)
    rewards = rewards + last * scores[:, None]
    return rewards, kl


class AdaptiveKLController:
    """Ziegler et al.'s adaptive KL coefficient (trl's AdaptiveKLController): moves the coefficient toward the target
    KL, by at most 20% of the gap per horizon; fixed where `adaptive` is False."""

    def __init__(self, init: float, target: float, adaptive: bool = True, horizon: int = 10000):
        self.value, self.target, self.adaptive, self.horizon = init, target, adaptive, horizon

    def update(self, current: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = min(max(current / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


class RunningMoments:
    """The running mean and standard deviation of the scores (ppo_score_norm), by Chan et al.'s parallel update."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        n, mean, var = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        delta, total = mean - self.mean, self.count + n
        self.var = (self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var * self.count / max(self.count - 1, 1)) if self.count > 1 else 1.0


def ppo_losses(logprobs, old_logprobs, values, old_values, advantages, returns, mask, cliprange: float,
               cliprange_value: float, vf_coef: float):
    """(loss, policy_loss, value_loss) of one mini-batch: the clipped surrogate and the clipped value loss."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    ratio = torch.exp(logprobs - old_logprobs)
    policy_loss = masked_mean(torch.max(-advantages * ratio,
                                        -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)), mask)
    return policy_loss + vf_coef * value_loss, policy_loss, value_loss


class PolicyWithValueHead(nn.Module):
    """A causal LM and a scalar value head on its last hidden states (trl's AutoModelForCausalLMWithValueHead)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.v_head.weight, std=1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.v_head.bias)
        self.config = policy.config

    def forward(self, input_ids, attention_mask):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        return out.logits, self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)

    def reference(self):
        """The reference model's context: the adapter disabled (a LoRA policy), as TRL does."""
        return self.policy.disable_adapter() if hasattr(self.policy, "disable_adapter") else contextlib.nullcontext()


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1..n-1, aligned with input_ids[:, 1:]."""
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


@dataclass
class Rollouts:
    """A buffer of generated completions, what PPO learns from: token ids (prompt left-padded, completion right-
    padded), the completion mask over positions 1..n-1, and the old policy's, reference's and value head's figures."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # completion tokens, aligned with input_ids[:, 1:]
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor

    def rows(self, index) -> dict:
        return {k: getattr(self, k)[index] for k in ("input_ids", "attention_mask", "mask", "logprobs", "values")}


@dataclass(frozen=True)
class PpoSettings:
    """The recipe's PPO keys the loop reads."""
    ppo_epochs: int
    mini_batch_size: int
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    whiten_rewards: bool


def ppo_update(model, rollouts: Rollouts, kl_coef: float, settings: PpoSettings, step_optimizer) -> dict:
    """ppo_epochs passes over the buffer in mini-batches; `step_optimizer(loss)` backpropagates one mini-batch's loss
    and steps. Returns the step's statistics (mean score, KL, losses)."""
    rewards, kl = token_rewards(rollouts.scores, rollouts.logprobs, rollouts.ref_logprobs, rollouts.mask, kl_coef)
    if settings.whiten_rewards:
        rewards = whiten(rewards, rollouts.mask, shift_mean=False) * rollouts.mask
    advantages, returns = gae(rollouts.values, rewards, rollouts.mask, settings.gamma, settings.lam)
    advantages = whiten(advantages, rollouts.mask) * rollouts.mask
    n = rollouts.input_ids.shape[0]
    losses = {"loss": [], "policy_loss": [], "value_loss": []}
    for _ in range(settings.ppo_epochs):
        for start in range(0, n, settings.mini_batch_size):
            index = slice(start, start + settings.mini_batch_size)
            rows = rollouts.rows(index)
            logits, values = model(rows["input_ids"], rows["attention_mask"])
            loss, policy_loss, value_loss = ppo_losses(
                token_logprobs(logits, rows["input_ids"]), rows["logprobs"], values[:, :-1].float(),
                rows["values"], advantages[index], returns[index], rows["mask"], settings.cliprange,
                settings.cliprange_value, settings.vf_coef)
            step_optimizer(loss)
            for key, value in (("loss", loss), ("policy_loss", policy_loss), ("value_loss", value_loss)):
                losses[key].append(value.item())
    mean_kl = (kl.sum(1)).mean().item()
    return {"score": rollouts.scores.mean().item(), "kl": mean_kl, "kl_coef": kl_coef,
            **{k: sum(v) / len(v) for k, v in losses.items()}}


@torch.no_grad()
def generate_rollouts(model, prompts: torch.Tensor, prompt_mask: torch.Tensor, generation: dict, pad_token_id: int,
                      eos_token_id: int | None, score) -> Rollouts:
    """Sample completions of the (left-padded) prompts with the policy, and measure them: the policy's and the
    reference's log-probs, the value head's values, and score(input_ids, attention_mask, completion_start) -> one
    score per row."""
    model.eval()
    output = model.policy.generate(input_ids=prompts, attention_mask=prompt_mask, pad_token_id=pad_token_id,
                                   eos_token_id=eos_token_id, **generation)
    start = prompts.shape[1]
    completion = output[:, start:]
    # a completion ends at its first eos (kept); what follows is padding
    if eos_token_id is not None:
        ended = (completion == eos_token_id).int().cumsum(1)
        keep = (ended == 0) | ((ended == 1) & (completion == eos_token_id))
    else:
        keep = torch.ones_like(completion, dtype=torch.bool)
    keep[:, 0] = True  # at least one token scored, as LLaMA-Factory keeps one
    completion = torch.where(keep, completion, torch.full_like(completion, pad_token_id))
    input_ids = torch.cat([prompts, completion], 1)
    attention_mask = torch.cat([prompt_mask, keep.long()], 1)
    mask = torch.cat([torch.zeros_like(prompt_mask[:, 1:]), keep.long()], 1).float()
    logits, values = model(input_ids, attention_mask)
    logprobs = token_logprobs(logits, input_ids)
    with model.reference():
        ref_logits, _ = model(input_ids, attention_mask)
    ref_logprobs = token_logprobs(ref_logits, input_ids)
    scores = score(input_ids, attention_mask, start).float()
    model.train()
    return Rollouts(input_ids, attention_mask, mask, logprobs, ref_logprobs, values[:, :-1].float() * mask, scores)


class PpoTrainer(Trainer):
    """A transformers Trainer whose training step is one PPO iteration over a batch of prompts: generate, score,
    then ppo_epochs passes of mini-batch updates. Every mini-batch but the last steps the optimizer here; the last
    one's loss is returned for the Trainer's own backward, clip and step (so one PPO iteration = one trainer step,
    and the learning-rate schedule advances once per iteration, as in LLaMA-Factory)."""

    def __init__(self, *args, settings: PpoSettings, generation: dict, score, kl: AdaptiveKLController,
                 score_norm: bool, target_kl_steps: int, on_rollouts=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings, self.generation, self.score, self.kl_ctl = settings, generation, score, kl
        self.score_norm, self.moments = score_norm, RunningMoments() if score_norm else None
        self.target_kl_steps, self.on_rollouts = target_kl_steps, on_rollouts
        self.ppo_history: list[dict] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        tokenizer = self.processing_class
        unwrapped = self.accelerator.unwrap_model(model)
        rollouts = generate_rollouts(unwrapped, inputs["input_ids"], inputs["attention_mask"], self.generation,
                                     tokenizer.pad_token_id, tokenizer.eos_token_id, self.score)
        raw_scores = rollouts.scores.clone()
        if self.moments is not None:  # LLaMA-Factory's ppo_score_norm: scores in units of their running spread
            self.moments.update(rollouts.scores)
            rollouts.scores = (rollouts.scores - self.moments.mean) / self.moments.std
        updates = self.settings.ppo_epochs * math.ceil(rollouts.input_ids.shape[0] / self.settings.mini_batch_size)
        held: list[torch.Tensor] = []

        def step_optimizer(loss):
            if len(held) + 1 == updates:  # the last: the Trainer backpropagates it and steps
                held.append(loss)
                return
            held.append(loss.detach())
            self.accelerator.backward(loss)
            if self.args.max_grad_norm:
                self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()

        model.train()
        stats = ppo_update(model, rollouts, self.kl_ctl.value, self.settings, step_optimizer)
        self.kl_ctl.update(stats["kl"], self.target_kl_steps)
        stats["score"] = raw_scores.mean().item()
        self.ppo_history.append({"step": self.state.global_step + 1, **stats})
        if self.on_rollouts is not None:
            self.on_rollouts(self.state.global_step + 1, rollouts, raw_scores)
        self.log_ppo = stats
        last = held[-1]
        self.accelerator.backward(last)
        return last.detach()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """A checkpoint holds the trainable weights (the LoRA, the value head) and the KL coefficient and score
        moments: the whole module's state would repeat the frozen base (tied embeddings, which safetensors refuses)."""
        trainable = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        super()._save(output_dir, trainable)
        state = {"kl_coef": self.kl_ctl.value, "history": self.ppo_history,
                 "moments": None if self.moments is None else vars(self.moments)}
        Path(output_dir or self.args.output_dir, PPO_STATE).write_text(json.dumps(state))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The trainable weights _save wrote, back into the model (by hand: transformers' loader expects a
        PreTrainedModel's attributes), then the KL coefficient and score moments."""
        from safetensors.torch import load_file
        model = model or self.model
        weights = load_file(str(Path(resume_from_checkpoint, "model.safetensors")))
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
        missing = {n for n, p in model.named_parameters() if p.requires_grad} - weights.keys()
        if unexpected or missing:
            raise TunelineError(f"{resume_from_checkpoint}: its weights do not match the PPO policy (unexpected: "
                                f"{sorted(unexpected)[:3]}, missing: {sorted(missing)[:3]}); delete the checkpoint "
                                "to start over")
        state = json.loads(Path(resume_from_checkpoint, PPO_STATE).read_text())
        self.kl_ctl.value, self.ppo_history = state["kl_coef"], state["history"]
        if self.moments is not None and state["moments"] is not None:
            vars(self.moments).update(state["moments"])

    def log(self, logs: dict, *args, **kwargs) -> None:
        stats = getattr(self, "log_ppo", None)
        if stats is not None and "loss" in logs:
            logs = {**logs, "reward": round(stats["score"], 4), "kl": round(stats["kl"], 4),
                    "value_loss": round(stats["value_loss"], 4), "policy_loss": round(stats["policy_loss"], 4)}
        super().log(logs, *args, **kwargs)
