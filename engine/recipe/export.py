"""The export sections: `merge` (adapters into the base) and `quantize` (GPTQ and AWQ through llm-compressor)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.recipe.fields import Float, Int, Section, check_threshold


class MergeSection(Section):
    """merged_model: the trained adapters merged into the base, checked against the adapter model's logits."""
    logits_atol: Float = check_threshold(
        1e-3, gt=0, description="check: the most the merged model's logits may differ (absolute) from the adapter "
        "model's; a float32 tolerance. Half precision moves logits of ~10 by ~0.1-0.3 (the tiny model): a bf16 run "
        "(model.bf16, infer_dtype bfloat16), or a bf16 checkpoint merged back into bf16 (the merge writes the "
        "base's dtype), needs about 0.5; model.infer_dtype: float32 writes float32 instead")


class QuantizeSection(Section):
    """gptq_model and awq_model: the merged model quantized by llm-compressor, calibrated on eval rows."""
    export_quantization_bit: Literal[4] = Field(4, description="LLaMA-Factory's key: bits per quantized weight (4 "
                                                               "only). LLaMA-Factory's default: unset (no "
                                                               "quantization)")
    group_size: Int = Field(32, ge=8, description="weights sharing one scale and zero point (GPTQ and AWQ); "
                                           "must divide every quantized layer's input width")
    calibration_samples: Int = Field(64, ge=1, description="eval rows the quantizers calibrate on (at most the "
                                                           "eval split). LLaMA-Factory's "
                                                           "export_quantization_nsamples: 128")
    max_ppl_ratio: Float = check_threshold(1.5, ge=1, description="check and gate: the quantized model's eval "
                                                                  "perplexity may be at most this times the merged "
                                                                  "model's")
    max_accuracy_drop: Float = check_threshold(0.05, ge=0, le=1, description="gate: the quantized model's task "
                                                                             "accuracy may fall at most this far "
                                                                             "below the merged model's")
