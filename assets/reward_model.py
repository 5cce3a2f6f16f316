"""reward_model: a sequence-classification reward model trained with TRL's RewardTrainer."""

from assets.training import LAUNCHER, processes
from assets.stage_asset import loss_table, stage_asset, tracking_metadata
from engine.device import PRECISION_KEYS, with_precision
from engine.stage import Stage
from engine.train.reward import build

PARENTS, KEYS = ("pt_model", "formatted_data"), ("reward", "data.cutoff_len", *PRECISION_KEYS)


def off(recipe) -> str | None:
    return None if recipe.runs("rm") else "rm is not in the recipe's stages"


def reads(recipe):
    """Off, it reads only the stages list: its own section cannot change what it records."""
    return (PARENTS, KEYS) if recipe.runs("rm") else ((), ("stages",))


STAGE = Stage("reward_model", entry=build, parents=PARENTS, keys=KEYS, select=reads, off=off, locate=LAUNCHER,
              outside=with_precision(lambda recipe, hasher: processes(recipe)), training=True)


def accuracy_above_chance(artifact, recipe) -> tuple[bool, str]:
    m, bound = artifact.metrics, recipe.reward.min_accuracy
    return m["eval_accuracy"] > bound, f"accuracy {m['eval_accuracy']:.3f} on {m['eval_pairs']} pairs, needs > {bound}"


reward_model = stage_asset(
    STAGE, group="training",
    description="Scores a conversation; judged by pairwise accuracy on held-out preference pairs.",
    summary=lambda a, r: f"held-out pairwise accuracy {a.metrics['eval_accuracy']:.2f}",
    metadata=lambda a, r: {**{k: a.metrics[k] for k in ("eval_accuracy", "eval_accuracy_before", "eval_pairs",
                                                                    "device", "dtype")},
                           "loss_curve": loss_table(a.metrics["loss_curve"]),
                           **tracking_metadata(a, r.reward.report_to)},
    checks={"accuracy_above_chance": accuracy_above_chance})
