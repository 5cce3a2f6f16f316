"""eval_<stage>: each model measured on the held-out split; model_comparison: all of them side by side,
with the deployment gates as blocking checks."""

from __future__ import annotations

import json

import dagster as dg

from assets.stage_asset import stage_asset
from assets.training import parents_run
from engine.models.device import PRECISION_KEYS, with_precision
from engine.evaluate.compare import (STAGE_MODELS, EVALUATED, evaluate_stage, compare_stages, comparison_summary, gates,
                                     generation_backend)
from engine.evaluate.scorers import scorer_identity
from engine.stage import Stage


def examples_table(examples: list[dict]) -> dg.MetadataValue:
    rows = "\n".join(f"| {json.dumps(e['reference'])} | {json.dumps(e['answer'])} |" for e in examples)
    return dg.MetadataValue.md(f"| reference | answer |\n|---|---|\n{rows}")


PER_QUESTION = ("examples", "example_scores", "example_rewards")  # per-question lists, not numbers Dagster plots


TRAINED = {"sft": "sft is not in the recipe's stages", "dpo": "dpo (or kto) is not in the recipe's stages"}


def off(stage: str):
    """eval_sft and eval_dpo are not configured while the recipe does not run that stage; every other evaluation
    always is."""
    if stage not in TRAINED:
        return None
    return lambda recipe: None if recipe.runs(stage) else TRAINED[stage]


def reads(stage: str, parents: tuple[str, ...], keys: tuple[str, ...]):
    """Off, only the stages list; without the rm stage, no reward model (the reward score is then None); without
    sft, DPO's model is pt_model + DPO."""
    def select(recipe):
        if stage in TRAINED and not recipe.runs(stage):
            return (), ("stages",)
        return parents_run(parents, recipe), keys
    return select


def outside_identity(recipe, hasher) -> dict:
    """What an evaluation depends on beyond its keys (the whole evaluation section, infer_backend included): the
    scorer's code, and the backend that generates on this machine (auto picks vLLM only where it can run)."""
    return {"scorer": scorer_identity(recipe.evaluation.scorer),
            "generation_backend": generation_backend(recipe.evaluation)}


def eval_asset(stage: str):
    parents, keys = (*STAGE_MODELS[stage], "formatted_data", "reward_model"), ("evaluation", *PRECISION_KEYS)
    declared = Stage(f"eval_{stage}", entry=evaluate_stage, parents=parents, keys=keys, select=reads(stage, parents, keys),
                     off=off(stage), outside=with_precision(outside_identity))
    return stage_asset(
        declared, group="evaluation",
        description=(f"The {stage} model on the held-out split: perplexity, task accuracy of greedy answers, and the "
                     "reward model's mean score of them."),
        summary=lambda a, r: (f"perplexity {a.metrics['perplexity']}, accuracy {a.metrics['accuracy']}, similarity "
                              f"{a.metrics['similarity']}, reward {a.metrics['reward_score']}, "
                              f"n={a.metrics['samples']}"),
        metadata=lambda a, r: {k: v for k, v in a.metrics.items() if k not in PER_QUESTION}
        | {"examples": examples_table(a.metrics["examples"])})


EVAL_ASSETS = [eval_asset(stage) for stage in EVALUATED]
GATES = ("dpo_not_worse_than_sft", "gptq_within_budget", "awq_within_budget")
COMPARISON = Stage("model_comparison", entry=compare_stages, parents=tuple(f"eval_{s}" for s in EVALUATED))


def gate(name: str):
    """A gate is a check: evaluated with the recipe's thresholds each time, so a new threshold rebuilds nothing."""
    return lambda artifact, recipe: gates(artifact.metrics["results"], recipe)[name]


model_comparison = stage_asset(
    COMPARISON, group="evaluation",
    description="Every stage side by side; the gates decide whether an export may be deployed.",
    summary=lambda a, r: comparison_summary(a.metrics["results"]),
    metadata=lambda a, r: {"comparison": dg.MetadataValue.md(a.metrics["table"])},
    checks={name: gate(name) for name in GATES})
