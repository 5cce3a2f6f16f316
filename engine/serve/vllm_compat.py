"""What vLLM makes of an export's config.json: compared with the quantization formats vLLM loads, on any machine and
without running vLLM (serving it with `vllm serve` is engine/serve/server.py's vllm_load)."""

from __future__ import annotations

import json
from pathlib import Path

# compressed-tensors formats vLLM's CompressedTensorsConfig loads for weight-only int quantization
VLLM_WEIGHT_FORMATS = {"pack-quantized", "naive-quantized", "int-quantized"}
VLLM_WEIGHT_BITS = {4, 8}


def vllm_config_problems(model_dir: Path) -> list[str]:
    """Reasons vLLM would refuse this checkpoint's quantization config; empty when it would load it."""
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization_config")
    if quant is None:
        return []  # an unquantized checkpoint: vLLM loads its dtype as it is
    problems = []
    if quant.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method {quant.get('quant_method')!r}, expected 'compressed-tensors'")
    if quant.get("format") not in VLLM_WEIGHT_FORMATS:
        problems.append(f"format {quant.get('format')!r}, expected one of {sorted(VLLM_WEIGHT_FORMATS)}")
    for name, group in (quant.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        if weights.get("num_bits") not in VLLM_WEIGHT_BITS or weights.get("type") != "int":
            problems.append(f"{name}: weights {weights.get('type')}{weights.get('num_bits')}, expected int4 or int8")
        if group.get("input_activations"):
            problems.append(f"{name}: quantized activations, expected weight-only (W4A16)")
    if not quant.get("config_groups"):
        problems.append("no config_groups")
    return problems
