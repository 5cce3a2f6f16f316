"""ppo_adapter: online RL by PPO (hand-written: the pinned TRL has no PPOTrainer) against the reward model, on top of
the SFT (and DPO) model."""

import math

import dagster as dg

from assets.stage_asset import counts_table, stage_asset, tracking_metadata
from engine.graph import PPO_ADAPTER
from engine.train.accounting import all_prompts_offered


def reward_curve_table(curve: list[dict]) -> dg.MetadataValue:
    rows = "\n".join(f"| {p['step']} | {p['reward']} | {p['kl']} | {p['value_loss']} |" for p in curve)
    return dg.MetadataValue.md(f"| step | mean reward | KL | value loss |\n|---|---|---|---|\n{rows}")


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    return {**{k: m[k] for k in ("reward_first", "reward_last", "kl_last", "train_prompts", "offered_prompts",
                                  "rollout_rows", "steps", "device", "dtype")},
            "reward_curve": reward_curve_table(m["reward_curve"]),
            **({"prompts_not_rolled_out": counts_table(m["prompts_dropped"], value="prompts")}
               if m.get("prompts_dropped") else {}),
            "rollouts": dg.MetadataValue.path(str(artifact.path / "rollouts.parquet")),
            **tracking_metadata(artifact, recipe.ppo.report_to)}


def trained_with_finite_losses(artifact, recipe) -> tuple[bool, str]:
    """Every PPO step's value loss and KL are finite numbers, and at least one step ran."""
    curve = artifact.metrics["reward_curve"]
    bad = [p["step"] for p in curve if not all(math.isfinite(p[k]) for k in ("reward", "kl", "value_loss"))]
    return bool(curve) and not bad, (f"{len(curve)} PPO steps" + (f"; non-finite at steps {bad}" if bad else
                                                                  ", every reward, KL and value loss finite"))


ppo_adapter = stage_asset(
    PPO_ADAPTER, group="training", metadata=metadata,
    description="PPO on the SFT model's own completions of the SFT prompts, scored by the reward model; the starting "
                "model (the adapter disabled) is the KL reference. eval_ppo and the gate judge it against SFT.",
    summary=lambda a, r: (f"ppo: mean reward {a.metrics['reward_first']} -> {a.metrics['reward_last']}, "
                          f"KL {a.metrics['kl_last']}, {a.metrics['train_prompts']} of {a.metrics['offered_prompts']} prompts rolled out"),
    checks={"finite_losses": trained_with_finite_losses,
            "every_prompt_offered": lambda a, r: all_prompts_offered(a.metrics)})
