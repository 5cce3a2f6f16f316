"""gptq_model and awq_model: 4-bit (W4A16) llm-compressor exports of the merged model."""

import shutil

import dagster as dg

import engine.evaluate
import engine.export.awq_cpu_shim
import engine.export.quantize
from assets.common import blocking_checks, emit
from engine.artifacts import Artifact, code_version
from engine.export.quantize import quantize
from pipelines.resources import Tuneline

CODE = code_version(engine.export.quantize, engine.export.awq_cpu_shim, engine.evaluate)


def quantize_to(out, method: str, merged: Artifact, formatted: Artifact, recipe) -> dict:
    metrics = quantize(merged.path, formatted.path, method, recipe.quantize, recipe.data.cutoff_len, out)
    for name in ("lineage.json", "README.md"):  # the export carries what made it
        shutil.copy(merged.path / name, out / name)
    return metrics


def quantized_asset(method: str):
    name = f"{method}_model"

    @dg.asset(name=name, group_name="export", code_version=CODE,
              check_specs=blocking_checks(name, "reloads_and_generates", "perplexity_within_bound"))
    def _asset(tuneline: Tuneline, merged_model: Artifact, formatted_data: Artifact):
        recipe = tuneline.recipe()
        artifact = tuneline.build(name, [merged_model, formatted_data], recipe.quantize.model_dump(), CODE,
                                  lambda out: quantize_to(out, method, merged_model, formatted_data, recipe))
        m, bound = artifact.metrics, recipe.quantize.max_ppl_ratio
        yield from emit(tuneline, artifact, f"{m['size_bytes']:,} bytes ({m['size_bytes'] / m['merged_size_bytes']:.0%}"
                        f" of merged), perplexity x{m['ppl_ratio']}",
                        {k: m[k] for k in ("eval_perplexity", "merged_eval_perplexity", "ppl_ratio", "size_bytes",
                                           "merged_size_bytes", "sample_answer")},
                        {"reloads_and_generates": (m["reloaded_quant_method"] == "compressed-tensors",
                                                   f"reloaded as {m['reloaded_quant_method']}, answered "
                                                   f"{m['sample_answer']!r}"),
                         "perplexity_within_bound": (m["ppl_ratio"] <= bound,
                                                     f"perplexity {m['eval_perplexity']} = x{m['ppl_ratio']} merged, "
                                                     f"bound x{bound}")})

    _asset.__doc__ = f"The merged model quantized to 4 bits with {method.upper()}, as a compressed-tensors checkpoint."
    return _asset


gptq_model = quantized_asset("gptq")
awq_model = quantized_asset("awq")
