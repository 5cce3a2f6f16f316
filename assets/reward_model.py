"""reward_model: a sequence-classification reward model trained with TRL's RewardTrainer."""

from assets.stage_asset import stage_asset, tracking_metadata
from engine.evaluate.stats import wilson_interval
from engine.graph import REWARD_MODEL
from engine.train.accounting import all_trained


CHANCE = 0.5  # a reward model that scores at random puts the chosen answer first in half the pairs


def accuracy_above_bound(artifact, recipe) -> tuple[bool, str]:
    """Held-out pairwise accuracy above reward.min_accuracy (the point estimate decides), with its Wilson interval.
    Named after its bound, not chance: a recipe may set the bound at or below chance (a few-step smoke run), and
    the detail then says that passing it shows no learning."""
    m, bound = artifact.metrics, recipe.reward.min_accuracy
    # the pairs won, back from the 4-digit accuracy: exact while eval_pairs < 10,000
    interval = wilson_interval(round(m["eval_accuracy"] * m["eval_pairs"]), m["eval_pairs"])
    verdict = "" if m["eval_accuracy"] > bound else f", short by {bound - m['eval_accuracy']:.4f}"
    chance = (f" (at or below chance, {CHANCE}: passing it shows no learning)" if bound <= CHANCE else "")
    return m["eval_accuracy"] > bound, (f"accuracy {m['eval_accuracy']:.4f} ({interval.describe()} pairs), "
                                        f"needs > {bound}{chance}{verdict}")


reward_model = stage_asset(
    REWARD_MODEL, group="training",
    description="Scores a conversation; judged by pairwise accuracy on held-out preference pairs.",
    summary=lambda a, r: f"held-out pairwise accuracy {a.metrics['eval_accuracy']:.2f}",
    metadata=lambda a, r: {**{k: a.metrics[k] for k in ("eval_accuracy", "eval_accuracy_before", "eval_pairs",
                                                                    "tokens_per_second", "steps", "device", "dtype")},
                           **tracking_metadata(a, r.reward.report_to)},
    checks={"accuracy_above_bound": accuracy_above_bound,
            "every_pair_trained": lambda a, r: all_trained(a.metrics, "pairs")})
