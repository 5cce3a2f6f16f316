"""The training stages a training process may run, by name: a spec.json names its stage, never a module, so whoever
can write the artifact root cannot choose what the next training process imports.

A fixed table rather than engine/graph.py's declarations: importing the graph in the child imports every stage's
modules (llm-compressor among them, 427 more modules, +0.7 s on a 6.4 s start measured on this 2-core machine).
tests/test_training_entries.py asserts that it equals what engine/graph.py declares for every training stage.
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


def entry_name(entry: Callable) -> str:
    return f"{entry.__module__}:{entry.__name__}"


def training_entry(stage: str, where: str = "spec.json") -> Callable:
    """The entry point of training stage `stage`, imported; any other name is refused in one line."""
    if not isinstance(stage, str) or stage not in TRAINING_ENTRIES:
        raise TunelineError(f"{where}: stage {stage!r} is not a training stage (expected one of "
                            f"{', '.join(TRAINING_ENTRIES)})")
    module, _, name = TRAINING_ENTRIES[stage].partition(":")
    return getattr(importlib.import_module(module), name)
