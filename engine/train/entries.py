"""The stages a stage process (a training process, or a pod) may run, by name: a spec.json names its stage, never a
module, so whoever can write the artifact root cannot choose what the next stage process imports. The training
stages, and the export and evaluation stages a recipe runs as pods (launcher.kubernetes.also_in_pods).

A fixed table rather than engine/graph.py's declarations: importing the graph in the child imports every stage's
modules (llm-compressor among them, 427 more modules, +0.7 s on a 6.4 s start measured on this 2-core machine).
tests/test_training_entries.py asserts that each table equals what engine/graph.py declares.
"""

from __future__ import annotations

import importlib
from typing import Callable

from engine.errors import TunelineError

TRAINING_ENTRIES = {
    "pt_model": "engine.train.pt:train_pt_model",
    "sft_adapter": "engine.train.sft:train_sft_adapter",
    "reward_model": "engine.train.reward:train_reward_model",
    "dpo_adapter": "engine.train.dpo:train_dpo_adapter",
    "ppo_adapter": "engine.train.ppo:train_ppo_adapter",
    "grpo_adapter": "engine.train.grpo:train_grpo_adapter",
}

# the stages that may run as pods besides training (Stage.remote: export, evaluation)
POD_ENTRIES = {
    "merged_model": "engine.export.merge:merge_model",
    "gptq_model": "engine.export.quantize:quantize_gptq",
    "awq_model": "engine.export.quantize:quantize_awq",
    **{f"eval_{stage}": "engine.evaluate.compare:evaluate_stage"
       for stage in ("base", "sft", "dpo", "ppo", "grpo", "merged", "gptq", "awq")},
}

STAGE_ENTRIES = {**TRAINING_ENTRIES, **POD_ENTRIES}


def entry_name(entry: Callable) -> str:
    return f"{entry.__module__}:{entry.__name__}"


def stage_entry(stage: str, where: str = "spec.json") -> Callable:
    """The entry point of stage `stage` (a training, export or evaluation stage), imported; any other name is
    refused in one line."""
    if not isinstance(stage, str) or stage not in STAGE_ENTRIES:
        raise TunelineError(f"{where}: stage {stage!r} is not a stage a stage process runs (expected a training, "
                            f"export or evaluation stage: {', '.join(STAGE_ENTRIES)})")
    module, _, name = STAGE_ENTRIES[stage].partition(":")
    return getattr(importlib.import_module(module), name)
