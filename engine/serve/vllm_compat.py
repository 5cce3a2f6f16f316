"""What vLLM's loader makes of an export's config.json, read on any machine without running vLLM (serving it with
`vllm serve` is engine/serve/server.py's vllm_load). The rules are vLLM's own, copied here because vLLM cannot be
imported without a CUDA build; each names the vLLM source it comes from."""

from __future__ import annotations

import json
from pathlib import Path

# vLLM's QuantizationMethods (vllm/model_executor/layers/quantization/__init__.py, as of vLLM commit 0034007):
# get_quantization_config raises "Invalid quantization method" for any other quant_method (a method vLLM added
# later is refused here: the safe side; tuneline's own exports are compressed-tensors)
VLLM_QUANTIZATION_METHODS = {
    "aqlm", "awq", "deepspeedfp", "tpu_int8", "fp8", "ptpc_fp8", "fbgemm_fp8", "modelopt", "modelopt_fp4", "marlin",
    "bitblas", "gguf", "gptq_marlin_24", "gptq_marlin", "gptq_bitblas", "awq_marlin", "gptq", "compressed-tensors",
    "bitsandbytes", "qqq", "hqq", "experts_int8", "ipex", "quark", "moe_wna16", "torchao", "auto-round"}
# compressed-tensors weight-only int (CompressedTensorsConfig._get_scheme_from_parts in
# vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py): a channel- or group-wise static
# scheme without input activations is CompressedTensorsWNA16 only in the pack-quantized format (marlin-24: 2:4
# sparse), with num_bits in WNA16_SUPPORTED_BITS (schemes/compressed_tensors_wNa16.py: 4 and 8, the bits both its
# symmetric and its zero-point maps hold); for anything else vLLM raises NotImplementedError, "No
# compressed-tensors compatible scheme was found"
VLLM_WEIGHT_ONLY_FORMATS = {"pack-quantized", "marlin-24"}
VLLM_WEIGHT_BITS = {4, 8}
VLLM_WEIGHT_STRATEGIES = {"channel", "group"}


def vllm_config_problems(model_dir: Path) -> list[str]:
    """Reasons vLLM's loader would refuse this checkpoint's quantization config; empty when it would load it.
    Weight-only int compressed-tensors (what tuneline's GPTQ and AWQ exports write) is read in full; another method
    vLLM knows is taken as it is."""
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization_config")
    if quant is None:
        return []  # an unquantized checkpoint: vLLM loads its dtype as it is
    method = quant.get("quant_method")
    if method not in VLLM_QUANTIZATION_METHODS:
        return [f"quant_method {method!r} is not one of vLLM's quantization methods"]
    if method != "compressed-tensors":
        return []
    problems = [] if quant.get("config_groups") else ["compressed-tensors without config_groups"]
    for name, group in (quant.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        form = group.get("format") or quant.get("format")
        if group.get("input_activations"):
            problems.append(f"{name}: quantized activations, expected weight-only (W4A16 or W8A16)")
        if form not in VLLM_WEIGHT_ONLY_FORMATS:
            problems.append(f"{name}: format {form!r}, expected one of {sorted(VLLM_WEIGHT_ONLY_FORMATS)}")
        if weights.get("type") != "int" or weights.get("num_bits") not in VLLM_WEIGHT_BITS:
            problems.append(f"{name}: weights {weights.get('type')}{weights.get('num_bits')}, expected int4 or int8")
        if weights.get("strategy") not in VLLM_WEIGHT_STRATEGIES or weights.get("dynamic"):
            problems.append(f"{name}: weights strategy {weights.get('strategy')!r} (dynamic "
                            f"{bool(weights.get('dynamic'))}), expected a static channel or group strategy")
    return problems
