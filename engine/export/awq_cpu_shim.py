"""Compatibility shim: llm-compressor 0.14's AWQ pins cached activations even with no accelerator.

`IntermediatesCache.pin_memory` calls `Tensor.pin_memory()`, which raises "Cannot access
accelerator device" on a CPU-only machine. Pinning only speeds host-to-device copies, so with no
accelerator it is safe to skip. The shim is a context manager so it never outlives the AWQ run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from llmcompressor.pipelines.cache import IntermediatesCache


def accelerator_available() -> bool:
    return torch.accelerator.is_available()


@contextmanager
def awq_cpu_compat() -> Iterator[bool]:
    """Inside the block, cache pinning is a no-op when there is no accelerator. Yields whether it patched."""
    if accelerator_available():
        yield False
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield True
    finally:
        IntermediatesCache.pin_memory = original
