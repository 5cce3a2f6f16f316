"""GRPO's rewards: the recipe's grpo.rewards as TRL reward functions (prompts, completions, **columns) -> scores, each
recording what it gave so the artifact's rollout table can show what was rewarded.

Built in: exact_match (against the row's reference answer, evaluation's exact_match), format (a regex the whole
completion matches), length (closeness to a target length in characters); a user's scorer `module:function` is
loaded as evaluation.scorer is (engine/evaluate/scorers.py), and fingerprinted by the same identity; reward_model is
the graph's reward model scoring prompt + completion as the chat template closes a turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.evaluate.scorers import exact_match, resolve_scorer, scorer_identity, scores

if TYPE_CHECKING:
    from engine.recipe import GrpoReward, GrpoSection

RewardFunc = Callable[..., list[float]]


def format_reward(pattern: str) -> Callable[[str, str], float]:
    regex = re.compile(pattern, re.DOTALL)
    return lambda completion, _reference: float(regex.fullmatch(completion.strip()) is not None)


def length_reward(target_chars: int) -> Callable[[str, str], float]:
    """1 at target_chars, falling linearly to 0 at 0 and at twice the target."""
    return lambda completion, _reference: max(0.0, 1.0 - abs(len(completion.strip()) - target_chars) / target_chars)


def reward_name(reward: GrpoReward, index: int) -> str:
    """The term's name in logs and the rollout table; a second term of the same type gets its index."""
    return reward.type if index == 0 else f"{reward.type}_{index}"


def reward_identity(rewards: list[GrpoReward]) -> list[str]:
    """What fingerprints the reward terms beyond their keys: a user scorer's source (as evaluation.scorer's)."""
    return [scorer_identity(r.scorer) for r in rewards if r.type == "scorer"]


def answer_scorer(reward: GrpoReward) -> Callable[[str, str], float]:
    """(completion, reference) -> [0, 1] for every term but reward_model."""
    if reward.type == "exact_match":
        return exact_match
    if reward.type == "format":
        return format_reward(reward.pattern)
    if reward.type == "length":
        return length_reward(reward.target_chars)
    return resolve_scorer(reward.scorer)


@dataclass
class RolloutLog:
    """Every scored completion of this run: {step, prompt, completion, <each reward>}. TRL calls the terms in
    order on the same completions: the first term starts the batch's rows, the others fill them in."""
    names: list[str]
    rows: list[dict] = field(default_factory=list)

    def record(self, step: int, name: str, prompts: list[str], completions: list[str], values: list[float]) -> None:
        if name == self.names[0]:
            self.rows.extend({"step": step, "prompt": p, "completion": c} for p, c in zip(prompts, completions,
                                                                                           strict=True))
        for row, value in zip(self.rows[-len(values):], values, strict=True):
            row[name] = value

    def table(self, weights: list[float], limit: int):
        """The rows with their weighted total, at most `limit` of them spread evenly over the run."""
        import pandas as pd
        rows = [{**r, "total": sum(w * r[n] for n, w in zip(self.names, weights, strict=True))} for r in self.rows]
        if len(rows) > limit:
            rows = [rows[i * len(rows) // limit] for i in range(limit)]
        return pd.DataFrame(rows, columns=["step", "prompt", "completion", *self.names, "total"])


def reward_functions(cfg: GrpoSection, reward_dir: Path | None, tokenizer, log: RolloutLog,
                     step: Callable[[], int]) -> tuple[list[RewardFunc], list[float]]:
    """TRL's reward_funcs and reward_weights for the recipe's terms; each records its scores in `log`."""
    funcs = []
    for index, reward in enumerate(cfg.rewards):
        name = reward_name(reward, index)
        score = model_scorer(reward_dir, tokenizer) if reward.type == "reward_model" else scored_against_reference(
            answer_scorer(reward), name)
        funcs.append(recorded(score, name, log, step))
    return funcs, [r.weight for r in cfg.rewards]


def scored_against_reference(scorer, name: str) -> Callable[[list[str], list[str], list[str]], list[float]]:
    def score(prompts, completions, references):
        try:
            return scores(scorer, completions, references)
        except ValueError as exc:  # a user scorer outside [0, 1]: say which reward
            raise ValueError(f"grpo.rewards {name}: {exc}") from None
    return score


def model_scorer(reward_dir: Path | None, tokenizer):
    """The reward model's score of each prompt + completion, closed as the chat template closes a turn (what it
    was trained on)."""
    from engine.evaluate.measure import reward_scores_of_ids, turn_suffix
    from engine.models.load import load_reward_model
    if reward_dir is None:
        raise ValueError("grpo.rewards names reward_model, but no reward model was given (rm must be in stages)")
    model, suffix = load_reward_model(reward_dir).eval(), turn_suffix(tokenizer)

    def score(prompts, completions, references):
        import torch
        sequences = [tokenizer(p + c + suffix, add_special_tokens=False)["input_ids"]
                     for p, c in zip(prompts, completions, strict=True)]
        with torch.no_grad():
            return reward_scores_of_ids(model, sequences, tokenizer.pad_token_id)
    return score


def recorded(score, name: str, log: RolloutLog, step: Callable[[], int]) -> RewardFunc:
    def reward(prompts, completions, reference, **_columns) -> list[float]:
        values = [float(v) for v in score(prompts, completions, reference)]
        log.record(step(), name, prompts, completions, values)
        return values
    reward.__name__ = name  # TRL logs each term as rewards/<__name__>/mean
    return reward
