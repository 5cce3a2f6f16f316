"""grpo_adapter: online RL with GRPO (TRL's GRPOTrainer) on top of the SFT (and DPO) model."""

import dagster as dg

from assets.stage_asset import stage_asset, tracking_metadata
from engine.graph import GRPO_ADAPTER
from engine.train.accounting import all_prompts_offered


def rollouts_table(rows: list[dict]) -> dg.MetadataValue:
    """A few rollouts as the artifact's rollouts.parquet holds them: what was sampled, and what it earned."""
    if not rows:
        return dg.MetadataValue.md("(no rollouts recorded)")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|").replace("\n", "\\n")[:80] for c in columns) + " |"
              for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    return {**{k: m[k] for k in ("reward_first", "reward_last", "train_prompts", "num_generations", "rollout_backend",
                                  "rollouts_kept", "steps", "device", "dtype")},
            "rewards": ", ".join(m["rewards"]), "rollouts": rollouts_table(m["rollouts_sample"]),
            **tracking_metadata(artifact, recipe.grpo.report_to)}


grpo_adapter = stage_asset(
    GRPO_ADAPTER, group="training", metadata=metadata,
    description="GRPO from the SFT model: completions sampled per prompt, scored by grpo.rewards, each pushed by its "
                "reward against its group's. rollouts.parquet in the artifact shows what was rewarded.",
    summary=lambda a, r: (f"mean reward {a.metrics['reward_first']} -> {a.metrics['reward_last']} "
                          f"({', '.join(a.metrics['rewards'])}), {a.metrics['steps']} steps"),
    checks={"every_prompt_offered": lambda a, r: all_prompts_offered(a.metrics)})
