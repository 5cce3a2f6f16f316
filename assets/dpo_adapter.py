"""dpo_adapter: preference optimisation (DPO, IPO, ORPO or KTO with TRL) on top of the SFT model."""

from assets.stage_asset import stage_asset, tracking_metadata
from engine.graph import DPO_ADAPTER
from engine.train.accounting import all_trained
from engine.train.dpo import unit_of


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    return {**{k: m[k] for k in ("pref_loss", "eval_reward_margin", "eval_reward_accuracy", "tokens_per_second",
                                  "steps", "device", "dtype")},
            **tracking_metadata(artifact, recipe.dpo.report_to)}


def reward_margin_above_bound(artifact, recipe) -> tuple[bool, str]:
    """The held-out mean chosen-minus-rejected reward (TRL's implicit reward) above dpo.min_reward_margin. Named
    after its bound, not its sign: a recipe may set it below 0 (a few-step smoke run), and the detail then says
    that such a bound accepts a model that prefers the rejected answers."""
    margin, bound = artifact.metrics["eval_reward_margin"], recipe.dpo.min_reward_margin
    below = " (below 0: accepts a model that prefers the rejected answers)" if bound < 0 else ""
    return margin > bound, f"mean chosen-minus-rejected reward {margin}, needs > {bound}{below}"


dpo_adapter = stage_asset(
    DPO_ADAPTER, group="training", metadata=metadata,
    description="Preference optimisation; the SFT model is the reference. The reward model judges it in eval_dpo.",
    summary=lambda a, r: (f"{a.metrics['pref_loss']}: eval reward margin {a.metrics['eval_reward_margin']}, "
                          f"accuracy {a.metrics['eval_reward_accuracy']}"),
    checks={"reward_margin_above_bound": reward_margin_above_bound,
            "every_example_trained": lambda a, r: all_trained(a.metrics, unit_of(a.metrics["pref_loss"]))})
