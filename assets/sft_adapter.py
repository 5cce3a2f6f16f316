"""sft_adapter: a LoRA adapter trained with TRL's SFTTrainer, loss on assistant tokens only."""

from assets.stage_asset import perplexity, stage_asset, tracking_metadata
from engine.graph import SFT_ADAPTER
from engine.train.accounting import all_trained


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    return {**{k: m[k] for k in ("eval_loss_before", "eval_loss_after", "tokens_per_second", "steps",
                                  "device", "dtype")},
            "eval_perplexity": perplexity(m["eval_loss_after"]), **tracking_metadata(artifact, recipe.sft.report_to)}


sft_adapter = stage_asset(
    SFT_ADAPTER, group="training", metadata=metadata,
    description="Supervised fine-tuning on the SFT view; eval loss is measured before and after.",
    summary=lambda a, r: f"eval loss {a.metrics['eval_loss_before']} -> {a.metrics['eval_loss_after']}",
    checks={"eval_loss_below_base": lambda a, r: (a.metrics["eval_loss_after"] < a.metrics["eval_loss_before"],
                                                  f"eval loss {a.metrics['eval_loss_after']} vs base "
                                                  f"{a.metrics['eval_loss_before']}"),
            "every_row_trained": lambda a, r: all_trained(a.metrics, "rows")})
