import pytest
import torch
from llmcompressor.pipelines.cache import IntermediatesCache

from engine.export.awq_cpu_shim import accelerator_available, awq_cpu_compat


@pytest.mark.skipif(accelerator_available(), reason="the shim only acts without an accelerator")
def test_shim_makes_pinning_a_noop_only_inside_the_block():
    cache = IntermediatesCache.from_dataloader([{"x": torch.ones(2)}])
    with pytest.raises(RuntimeError):  # the bug the shim guards against
        cache.pin_memory(0)
    original = IntermediatesCache.pin_memory
    with awq_cpu_compat() as patched:
        assert patched
        cache.pin_memory(0)  # no error
        assert torch.equal(cache.fetch(0)["x"], torch.ones(2))
    assert IntermediatesCache.pin_memory is original
