"""merged_model: base + SFT + DPO merged into full safetensors weights, with model card and lineage."""

import dagster as dg

import engine.export.docs
import engine.export.merge
import engine.lineage
import engine.models
from assets.common import blocking_checks, emit, passed
from engine.artifacts import Artifact, code_version
from engine.train.common import trained_weights
from engine.export.docs import write_export_docs
from engine.export.merge import merge
from engine.lineage import export_lineage
from engine.models import model_dir
from pipelines.resources import Tuneline

CODE = code_version(engine.export.merge, engine.export.docs, engine.lineage, engine.models)


def merged_checks(m: dict, recipe) -> dict[str, tuple[bool, str]]:
    atol = recipe.merge.logits_atol
    return {"logits_match_adapters": (m["max_logit_diff"] <= atol,
                                      f"max |logit difference| {m['max_logit_diff']:.2e}, tolerance {atol}")}


def merge_to(out, tuneline: Tuneline, base: Artifact, sft: Artifact, dpo: Artifact, formatted: Artifact) -> dict:
    recipe = tuneline.recipe()
    metrics = merge(model_dir(base.path), trained_weights(sft.path), trained_weights(dpo.path), formatted.path, out)
    lineage = export_lineage(tuneline.catalog(), [a.fingerprint for a in (base, sft, dpo, formatted)],
                             recipe.model_dump())
    write_export_docs(out, f"{recipe.name} merged model", lineage, metrics, passed(merged_checks(metrics, recipe)))
    return metrics


@dg.asset(group_name="export", code_version=CODE, check_specs=blocking_checks("merged_model", "logits_match_adapters"))
def merged_model(tuneline: Tuneline, pt_model: Artifact, sft_adapter: Artifact, dpo_adapter: Artifact,
                 formatted_data: Artifact):
    """A standalone model: reloads with plain transformers and gives the adapter model's logits."""
    recipe = tuneline.recipe()
    parents = [pt_model, sft_adapter, dpo_adapter, formatted_data]
    artifact = tuneline.build("merged_model", parents, recipe.merge.model_dump(), CODE,
                              lambda out: merge_to(out, tuneline, *parents))
    m = artifact.metrics
    yield from emit(tuneline, artifact, f"eval perplexity {m['eval_perplexity']}, {m['size_bytes']:,} bytes",
                    {"eval_perplexity": m["eval_perplexity"], "max_logit_diff": m["max_logit_diff"],
                     "size_bytes": m["size_bytes"], "sample_answer": m["sample_answer"]},
                    merged_checks(m, recipe))
