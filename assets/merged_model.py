"""merged_model: base + SFT + DPO merged into full safetensors weights, with model card and lineage."""

import dagster as dg

import engine.export.merge
import engine.lineage
import engine.models
from assets.common import blocking_checks, emit
from engine.artifacts import Artifact, code_version
from engine.export.merge import merge
from engine.lineage import build_lineage
from engine.models import model_dir
from pipelines.resources import Tuneline

CODE = code_version(engine.export.merge, engine.lineage, engine.models)


@dg.asset(group_name="export", code_version=CODE, check_specs=blocking_checks("merged_model", "logits_match_adapters"))
def merged_model(tuneline: Tuneline, base_model: Artifact, sft_adapter: Artifact, dpo_adapter: Artifact,
                 formatted_data: Artifact):
    """A standalone model: reloads with plain transformers and gives the adapter model's logits."""
    recipe = tuneline.recipe()
    parents = [base_model, sft_adapter, dpo_adapter, formatted_data]
    artifact = tuneline.build("merged_model", parents, recipe.merge.model_dump(), CODE, lambda out: merge(
        model_dir(base_model.path), sft_adapter.path / "adapter", dpo_adapter.path / "adapter", formatted_data.path,
        out, build_lineage(tuneline.store(), tuneline.catalog(), parents, recipe.model_dump())))
    m, atol = artifact.metrics, recipe.merge.logits_atol
    yield from emit(tuneline, artifact, f"eval perplexity {m['eval_perplexity']}, {m['size_bytes']:,} bytes",
                    {"eval_perplexity": m["eval_perplexity"], "max_logit_diff": m["max_logit_diff"],
                     "size_bytes": m["size_bytes"], "sample_answer": m["sample_answer"]},
                    {"logits_match_adapters": (m["max_logit_diff"] <= atol,
                                               f"max |logit difference| {m['max_logit_diff']:.2e}, tolerance {atol}")})
