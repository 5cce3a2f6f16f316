"""TRL's fused LM head, projecting only the positions that have a label on a CPU too.

TRL's SFT and DPO (and KTO) trainers compute per-token log-probabilities through a fused LM head
(trl.trainer.utils.add_fused_lm_head) that projects hidden states onto the vocabulary in tiles. On CUDA with
Triton it projects only the positions whose label is not -100; elsewhere it projects every position, prompt and
padding included, so that an ahead-of-time compiler (Neuron) sees the same tile shapes on every batch. Eager
PyTorch on a CPU compiles nothing, and there the prompt and padding make up much of a batch (DPO on
LLaMA-Factory's demo pairs: about half), each position costing a full row of the vocabulary projection and its
softmax. TRL zeroes the positions left out either way, so every output and gradient is the same, up to
floating-point rounding (other matrix shapes sum in another order). TRL's RewardTrainer and ORPOTrainer do not
use this head. While on, a CPU computes the head's log-probabilities with engine/train/cpu_log_probs.py (the same
outputs in fewer passes).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterator

from engine.models.device import training_kernels
from engine.train.cpu_log_probs import log_probs_for


class _Switch:
    """One process-wide switch, on while any context holds it: TRL's own decision, kept while it is replaced."""
    lock = threading.Lock()
    holders = 0
    trl_decision: Callable | None = None
    trl_function: type | None = None


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """While open (in any thread), TRL's fused LM head projects only the labelled positions where the device policy
    says so (a CPU: engine/models/device.py training_kernels), as TRL itself does on CUDA. TRL takes this decision in one module-level test (`_use_triton(device)`, read at each call; it has no
    public switch); only that decision changes: its kernels still run as torch code on a CPU."""
    from trl.trainer import utils
    with _Switch.lock:
        if _Switch.holders == 0:
            decide = _Switch.trl_decision = utils._use_triton
            utils._use_triton = lambda device: training_kernels(device).labelled_lm_head or decide(device)
            _Switch.trl_function = utils._ChunkedLogProbFunction
            utils._ChunkedLogProbFunction = log_probs_for(_Switch.trl_function)  # CPU tensors: CpuLogProbs
        _Switch.holders += 1
    try:
        yield
    finally:
        with _Switch.lock:
            _Switch.holders -= 1
            if _Switch.holders == 0:
                utils._use_triton = _Switch.trl_decision
                utils._ChunkedLogProbFunction = _Switch.trl_function


def trains_on_labelled_positions(entry: Callable) -> Callable:
    """A training stage's entry point, run with labelled_positions_only (in its code version's closure, so
    changing this module rebuilds the stages that train under it)."""
    @functools.wraps(entry)
    def run(*args, **kwargs):
        with labelled_positions_only():
            return entry(*args, **kwargs)
    return run
