"""pt_model: continued pre-training on raw text (LLaMA-Factory's stage pt), the model SFT, reward and DPO
start from. While the recipe's pt.dataset is empty it is the base model itself, and says so."""

from assets.stage_asset import NOT_CONFIGURED, perplexity, stage_asset, tracking_metadata
from engine.graph import PT_MODEL

def summary(artifact, recipe) -> str:
    m = artifact.metrics
    if not m["continued_pretraining"]:
        if m.get("adapters_merged"):
            return f"off (pt.dataset is empty): the base model with {len(m['adapters_merged'])} adapter(s) merged in"
        return "off (pt.dataset is empty): the base model, unchanged"
    return f"held-out loss {m['eval_loss_before']} -> {m['eval_loss_after']} on {m['train_texts']} texts"


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    if not m["continued_pretraining"]:
        return {"continued_pretraining": False, "adapters_merged": m.get("adapters_merged", [])}
    return {"continued_pretraining": True,
            **{k: m[k] for k in ("eval_loss_before", "eval_loss_after", "train_texts", "eval_texts", "quarantined",
                                 "tokens_per_second", "steps", "device", "dtype")}, "eval_perplexity": perplexity(m["eval_loss_after"]),
            **tracking_metadata(artifact, recipe.pt.report_to)}


def eval_loss_below_base(artifact, recipe) -> tuple[bool, str]:
    m = artifact.metrics
    if not m["continued_pretraining"]:
        return NOT_CONFIGURED, "not configured: pt.dataset is empty, no continued pre-training to compare"
    return m["eval_loss_after"] < m["eval_loss_before"], f"held-out loss {m['eval_loss_after']} vs base {m['eval_loss_before']}"


pt_model = stage_asset(PT_MODEL, group="training", summary=summary, metadata=metadata,
                       description="The base model after continued pre-training on pt.dataset, or the base model "
                                   "unchanged when pt is off.",
                       checks={"eval_loss_below_base": eval_loss_below_base})
