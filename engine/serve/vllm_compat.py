"""What vLLM makes of an export: its config.json compared with the quantization formats vLLM loads (on any machine,
without running vLLM), and, where vLLM can run (its package and a CUDA GPU), the export served by `vllm serve`."""

from __future__ import annotations

import json
from pathlib import Path

from engine.models.backends import vllm_usable
from engine.errors import ServeError

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


def vllm_load(deployment_dir: Path, smoke: dict, messages: list[dict], timeout: float) -> dict | None:
    """The deployment served by `vllm serve` (its recorded command line) and asked `messages`, where vLLM can run;
    None where it cannot (nothing was run). The smoke test's own answer when vLLM is what served it. A server that
    does not start or answer is recorded as {"error": ...}, for the check to fail with."""
    if not vllm_usable():
        return None
    if smoke["backend"] == "vllm":
        return {"answer": smoke["answer"], "startup_seconds": smoke["startup_seconds"], "error": None}
    from openai import OpenAIError
    from engine.serve.server import smoke_serve
    try:
        served = smoke_serve(deployment_dir, "vllm", messages, timeout)
    except (ServeError, OpenAIError) as exc:  # it did not start, or did not answer
        return {"answer": None, "startup_seconds": None, "error": " ".join(str(exc).split())}
    return {"answer": served["answer"], "startup_seconds": served["startup_seconds"], "error": None}
