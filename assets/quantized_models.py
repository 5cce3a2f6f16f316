"""gptq_model and awq_model: 4-bit (W4A16) llm-compressor exports of the merged model."""

from assets.stage_asset import stage_asset
from engine.graph import AWQ_MODEL, GPTQ_MODEL
from engine.models.sample import judge_sample
from engine.stage import Stage

QUANTIZED_METRICS = ("eval_perplexity", "merged_eval_perplexity", "ppl_ratio", "size_bytes", "merged_size_bytes",
                     "sample", "merged_sample", "device", "dtype")


def reloads_and_generates(artifact, recipe) -> tuple[bool, str]:
    """The export reloaded as a compressed-tensors checkpoint, and its greedy answer to the first eval row's question
    is non-empty, stopped on eos within the token limit, and starts as the merged model's answer to the same question
    does (both measured when the stage was built). Where the merged model itself runs to the limit (a few-step
    smoke run answers noise), the export is held only to a non-empty answer, and the detail says so."""
    m = artifact.metrics
    merged = m["merged_sample"]
    if merged["stopped_on_eos"]:
        passed, detail = judge_sample(m["sample"], expected=merged["answer"], expected_from="merged_model")
    else:
        passed, detail = judge_sample(m["sample"], stop_required=False)
        detail += (f"; merged_model ran to the {merged['max_new_tokens']}-token limit too ({merged['answer'][:40]!r}), "
                   "so neither a stop nor its words are required")
    method = m["reloaded_quant_method"]
    if method != "compressed-tensors":
        return False, f"reloaded as {method}, not compressed-tensors; {detail}"
    return passed, detail


def perplexity_within_bound(artifact, recipe) -> tuple[bool, str]:
    m, bound = artifact.metrics, recipe.quantize.max_ppl_ratio
    return m["ppl_ratio"] <= bound, f"perplexity {m['eval_perplexity']} = x{m['ppl_ratio']} merged, bound x{bound}"


def quantized_asset(stage: Stage, method: str):
    return stage_asset(
        stage, group="export",
        description=f"The merged model quantized to 4 bits with {method.upper()}, as a compressed-tensors checkpoint.",
        summary=lambda a, r: (f"{a.metrics['size_bytes']:,} bytes ({a.metrics['size_bytes'] / a.metrics['merged_size_bytes']:.0%}"
                              f" of merged), perplexity x{a.metrics['ppl_ratio']}"),
        metadata=lambda a, r: {k: a.metrics[k] for k in QUANTIZED_METRICS},
        checks={"reloads_and_generates": reloads_and_generates, "perplexity_within_bound": perplexity_within_bound})


gptq_model = quantized_asset(GPTQ_MODEL, "gptq")
awq_model = quantized_asset(AWQ_MODEL, "awq")
