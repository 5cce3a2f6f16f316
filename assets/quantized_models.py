"""gptq_model and awq_model: 4-bit (W4A16) llm-compressor exports of the merged model."""

import dagster as dg

import engine.evaluate
import engine.export.awq_cpu_shim
import engine.export.docs
import engine.export.quantize
import engine.lineage
from assets.common import blocking_checks, emit, passed
from engine.artifacts import Artifact, code_version
from engine.export.docs import write_export_docs
from engine.export.quantize import quantize
from engine.lineage import export_lineage
from pipelines.resources import Tuneline

CODE = code_version(engine.export.quantize, engine.export.awq_cpu_shim, engine.export.docs, engine.lineage,
                    engine.evaluate)


def quantized_checks(m: dict, recipe) -> dict[str, tuple[bool, str]]:
    bound = recipe.quantize.max_ppl_ratio
    return {"reloads_and_generates": (m["reloaded_quant_method"] == "compressed-tensors",
                                      f"reloaded as {m['reloaded_quant_method']}, answered {m['sample_answer']!r}"),
            "perplexity_within_bound": (m["ppl_ratio"] <= bound, f"perplexity {m['eval_perplexity']} = "
                                        f"x{m['ppl_ratio']} merged, bound x{bound}")}


def quantize_to(out, tuneline: Tuneline, method: str, merged: Artifact, formatted: Artifact) -> dict:
    recipe = tuneline.recipe()
    metrics = quantize(merged.path, formatted.path, method, recipe.quantize, recipe.data.cutoff_len, out)
    lineage = export_lineage(tuneline.catalog(), [merged.fingerprint, formatted.fingerprint], recipe.model_dump())
    write_export_docs(out, f"{recipe.name} {method.upper()} 4-bit model", lineage, metrics,
                      passed(quantized_checks(metrics, recipe)))
    return metrics


def quantized_asset(method: str):
    name = f"{method}_model"

    @dg.asset(name=name, group_name="export", code_version=CODE,
              check_specs=blocking_checks(name, "reloads_and_generates", "perplexity_within_bound"))
    def _asset(tuneline: Tuneline, merged_model: Artifact, formatted_data: Artifact):
        recipe = tuneline.recipe()
        artifact = tuneline.build(name, [merged_model, formatted_data], recipe.quantize.model_dump(), CODE,
                                  lambda out: quantize_to(out, tuneline, method, merged_model, formatted_data))
        m = artifact.metrics
        yield from emit(tuneline, artifact, f"{m['size_bytes']:,} bytes ({m['size_bytes'] / m['merged_size_bytes']:.0%}"
                        f" of merged), perplexity x{m['ppl_ratio']}",
                        {k: m[k] for k in ("eval_perplexity", "merged_eval_perplexity", "ppl_ratio", "size_bytes",
                                           "merged_size_bytes", "sample_answer")},
                        quantized_checks(m, recipe))

    _asset.__doc__ = f"The merged model quantized to 4 bits with {method.upper()}, as a compressed-tensors checkpoint."
    return _asset


gptq_model = quantized_asset("gptq")
awq_model = quantized_asset("awq")
