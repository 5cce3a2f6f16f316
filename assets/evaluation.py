"""eval_<stage>: each model measured on the held-out split; model_comparison: all of them side by side,
with the deployment gates as blocking checks."""

from __future__ import annotations

import json

import dagster as dg

import engine.evaluate
import engine.evaluation
import engine.models
import engine.scorers
from assets.common import blocking_checks, emit
from engine.artifacts import Artifact, code_version
from engine.train.common import trained_weights
from engine.evaluation import STAGES, comparison_summary, evaluate_stage, gates, write_comparison
from engine.models import model_dir
from engine.scorers import scorer_identity
from pipelines.resources import Tuneline

CODE = code_version(engine.evaluation, engine.evaluate, engine.scorers, engine.models)

# the model each stage means: base plus adapters (applied in order), or an export directory
STAGE_INPUTS = {"base": ("base_model",), "sft": ("pt_model", "sft_adapter"),
                "dpo": ("pt_model", "sft_adapter", "dpo_adapter"), "merged": ("merged_model",),
                "gptq": ("gptq_model",), "awq": ("awq_model",)}


def stage_paths(inputs: dict[str, Artifact]):
    """(model directory, adapter directories) of a stage's inputs."""
    start = inputs.get("base_model") or inputs.get("pt_model")
    if start is None:
        (export,) = inputs.values()
        return export.path, []
    adapters = [trained_weights(inputs[name].path) for name in ("sft_adapter", "dpo_adapter") if name in inputs]
    return model_dir(start.path), adapters


def examples_table(examples: list[dict]) -> dg.MetadataValue:
    rows = "\n".join(f"| {json.dumps(e['reference'])} | {json.dumps(e['answer'])} |" for e in examples)
    return dg.MetadataValue.md(f"| reference | answer |\n|---|---|\n{rows}")


def eval_asset(stage: str):
    name = f"eval_{stage}"
    ins = {model: dg.AssetIn() for model in STAGE_INPUTS[stage]} | {"formatted_data": dg.AssetIn(),
                                                                     "reward_model": dg.AssetIn()}

    @dg.asset(name=name, group_name="evaluation", code_version=CODE, ins=ins)
    def _asset(tuneline: Tuneline, **inputs: Artifact):
        recipe = tuneline.recipe()
        formatted, reward = inputs.pop("formatted_data"), inputs.pop("reward_model")
        model_path, adapters = stage_paths(inputs)
        config = {"evaluation": recipe.evaluation.model_dump(), "scorer": scorer_identity(recipe.evaluation.scorer)}
        artifact = tuneline.build(name, [*inputs.values(), formatted, reward], config, CODE,
                                  lambda out: evaluate_stage(model_path, adapters, formatted.path, reward.path,
                                                             recipe.evaluation))
        m = artifact.metrics
        yield from emit(tuneline, artifact, f"perplexity {m['perplexity']}, accuracy {m['accuracy']}, "
                        f"similarity {m['similarity']}, reward {m['reward_score']}",
                        {k: v for k, v in m.items() if k != "examples"} | {"examples": examples_table(m["examples"])},
                        {})

    _asset.__doc__ = (f"The {stage} model on the held-out split: perplexity, task accuracy of greedy answers, "
                      "and the reward model's mean score of them.")
    return _asset


EVAL_ASSETS = [eval_asset(stage) for stage in STAGES]
GATES = ("dpo_not_worse_than_sft", "gptq_within_budget", "awq_within_budget")


@dg.asset(group_name="evaluation", code_version=CODE, ins={f"eval_{s}": dg.AssetIn() for s in STAGES},
          check_specs=blocking_checks("model_comparison", *GATES))
def model_comparison(tuneline: Tuneline, **evaluations: Artifact):
    """Every stage side by side; the gates decide whether an export may be deployed."""
    recipe = tuneline.recipe()
    config = {"dpo.min_reward_gain": recipe.dpo.min_reward_gain, "quantize": recipe.quantize.model_dump()}
    results = {name.removeprefix("eval_"): artifact.metrics for name, artifact in evaluations.items()}
    checks = gates(results, recipe)
    artifact = tuneline.build("model_comparison", list(evaluations.values()), config, CODE,
                              lambda out: write_comparison(out, results, checks))
    yield from emit(tuneline, artifact, comparison_summary(results),
                    {"comparison": dg.MetadataValue.md(artifact.metrics["table"])}, checks)
