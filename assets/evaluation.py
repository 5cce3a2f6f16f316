"""eval_<stage>: each model measured on the held-out split; model_comparison: all of them side by side,
with the deployment gates as blocking checks."""

from __future__ import annotations

import json

import dagster as dg

from assets.stage_asset import stage_asset
from engine.evaluate.compare import EVALUATED, comparison_summary, gates
from engine.graph import EVALUATIONS, MODEL_COMPARISON


def examples_table(examples: list[dict]) -> dg.MetadataValue:
    rows = "\n".join(f"| {json.dumps(e['reference'])} | {json.dumps(e['answer'])} |" for e in examples)
    return dg.MetadataValue.md(f"| reference | answer |\n|---|---|\n{rows}")


PER_QUESTION = ("examples", "example_scores", "example_rewards")  # per-question lists, not numbers Dagster plots


def eval_asset(stage: str):
    return stage_asset(
        EVALUATIONS[stage], group="evaluation",
        description=(f"The {stage} model on the held-out split: perplexity, task accuracy of greedy answers, and the "
                     "reward model's mean score of them."),
        summary=lambda a, r: (f"perplexity {a.metrics['perplexity']}, accuracy {a.metrics['accuracy']}, similarity "
                              f"{a.metrics['similarity']}, reward {a.metrics['reward_score']}, "
                              f"n={a.metrics['samples']}"),
        metadata=lambda a, r: {k: v for k, v in a.metrics.items() if k not in PER_QUESTION}
        | {"examples": examples_table(a.metrics["examples"])})


EVAL_ASSETS = [eval_asset(stage) for stage in EVALUATED]
GATES = ("dpo_not_worse_than_sft", "ppo_not_worse_than_sft", "grpo_not_worse_than_sft", "gptq_within_budget",
         "awq_within_budget")


def gate(name: str):
    """A gate is a check: evaluated with the recipe's thresholds each time, so a new threshold rebuilds nothing."""
    return lambda artifact, recipe: gates(artifact.metrics["results"], recipe)[name]


model_comparison = stage_asset(
    MODEL_COMPARISON, group="evaluation",
    description="Every stage side by side; the gates decide whether an export may be deployed.",
    summary=lambda a, r: comparison_summary(a.metrics["results"]),
    metadata=lambda a, r: {"comparison": dg.MetadataValue.md(a.metrics["table"])},
    checks={name: gate(name) for name in GATES})
