"""dpo_adapter: preference optimisation (DPO, IPO, ORPO or KTO with TRL) on top of the SFT model."""

from assets.stage_asset import stage_asset, tracking_metadata
from engine.graph import DPO_ADAPTER
from engine.train.accounting import all_trained
from engine.train.dpo import unit_of


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    return {**{k: m[k] for k in ("pref_loss", "eval_reward_margin", "eval_reward_accuracy", "device",
                                  "dtype")},
            **tracking_metadata(artifact, recipe.dpo.report_to)}


dpo_adapter = stage_asset(
    DPO_ADAPTER, group="training", metadata=metadata,
    description="Preference optimisation; the SFT model is the reference. The reward model judges it in eval_dpo.",
    summary=lambda a, r: (f"{a.metrics['pref_loss']}: eval reward margin {a.metrics['eval_reward_margin']}, "
                          f"accuracy {a.metrics['eval_reward_accuracy']}"),
    checks={"reward_margin_positive": lambda a, r: (a.metrics["eval_reward_margin"] > r.dpo.min_reward_margin,
                                                    f"mean chosen-minus-rejected reward {a.metrics['eval_reward_margin']}, "
                                                    f"needs > {r.dpo.min_reward_margin}"),
            "every_example_trained": lambda a, r: all_trained(a.metrics, unit_of(a.metrics["pref_loss"]))})
