"""TRL's fused LM head, scoring only the positions that have a label on every device.

TRL's SFT, DPO and KTO trainers compute per-token log-probabilities through a fused
LM head (trl.trainer.utils.add_fused_lm_head) that projects hidden states onto the vocabulary in tiles. On CUDA
it projects only the positions whose label is not -100; elsewhere it projects every position, prompt and padding
included, so that an ahead-of-time compiler (Neuron) sees the same tile shapes on every batch. Eager PyTorch on a
CPU compiles nothing, and there the prompt and padding make up most of a batch's positions (DPO on LLaMA-Factory's
demo pairs: about half), each costing a full row of the vocabulary projection and its softmax. The positions
left out are zeroed in TRL's output either way, so the results are the same.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """While open, TRL's fused LM head projects only the labelled positions on a CPU too (as it does on CUDA).
    TRL decides this with one module-level test (`_use_triton(device)`, read at each call); only that decision
    changes: its kernels still run as torch code on a CPU."""
    from trl.trainer import utils
    decide = utils._use_triton  # TRL has no public switch for this
    utils._use_triton = lambda device: device.type == "cpu" or decide(device)
    try:
        yield
    finally:
        utils._use_triton = decide
