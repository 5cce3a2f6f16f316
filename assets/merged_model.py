"""merged_model: base + SFT + DPO (those the recipe runs) merged into full safetensors weights, with model card and lineage."""

from assets.stage_asset import stage_asset
from engine.graph import MERGED_MODEL


def logits_match_adapters(artifact, recipe) -> tuple[bool, str]:
    diff, atol = artifact.metrics["max_logit_diff"], recipe.merge.logits_atol
    saved = artifact.metrics.get("saved_dtype")
    return diff <= atol, (f"max |logit difference| {diff:.2e}, tolerance {atol}"
                          + (f" (computed in {artifact.metrics['dtype']}, saved in {saved})" if saved else ""))


merged_model = stage_asset(
    MERGED_MODEL, group="export",
    description="A standalone model: reloads with plain transformers and gives the adapter model's logits.",
    summary=lambda a, r: f"eval perplexity {a.metrics['eval_perplexity']}, {a.metrics['size_bytes']:,} bytes",
    metadata=lambda a, r: {k: a.metrics[k] for k in ("eval_perplexity", "max_logit_diff", "size_bytes",
                                                      "sample_answer", "device", "dtype", "saved_dtype")},
    checks={"logits_match_adapters": logits_match_adapters})
