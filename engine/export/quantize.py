"""4-bit weight-only quantization (W4A16) with llm-compressor: GPTQ or AWQ, compressed-tensors output.

The checkpoint carries a compressed-tensors quantization_config, which vLLM and transformers load.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.core import reset_session
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform import AWQModifier

from engine.runtime import progress
from engine.data.format import read_view
from engine.runtime.progress import Progress
from engine.models.device import Precision, infer_dtype, precision_metrics, release
from engine.evaluate.measure import eval_question, perplexity
from engine.export.awq_cpu_shim import awq_cpu_compat
from engine.export.merge import dir_size
from engine.models.load import load_causal_lm, load_tokenizer
from engine.models.sample import sample_answer

if TYPE_CHECKING:
    from engine.recipe import QuantizeSection
    from engine.stage import StageRun

Method = Literal["gptq", "awq"]


def w4a16_scheme(group_size: int, symmetric: bool) -> dict:
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=group_size)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def recipe_for(method: Method, cfg: QuantizeSection) -> list:
    if method == "gptq":
        return [GPTQModifier(config_groups=w4a16_scheme(cfg.group_size, symmetric=True), ignore=["lm_head"])]
    return [AWQModifier(), QuantizationModifier(config_groups=w4a16_scheme(cfg.group_size, symmetric=False),
                                                ignore=["lm_head"])]


def check_group_size(model, group_size: int) -> None:
    widths = {m.in_features for name, m in model.named_modules() if hasattr(m, "in_features") and "lm_head" not in name}
    bad = sorted(w for w in widths if w % group_size)
    if bad:
        raise ValueError(f"quantize.group_size {group_size} does not divide the input width of layers {bad}")


@contextlib.contextmanager
def layer_progress(model):
    """llm-compressor calibrates the decoder a layer at a time and takes no progress callback: a forward hook on
    each decoder layer counts the layers calibration has reached (a layer's first call)."""
    layers = next((m for name, m in model.named_modules() if name.endswith("layers")
                   and isinstance(m, torch.nn.ModuleList)), [])
    counter, seen = Progress("calibration", total=len(layers), unit="layers"), set()

    def reached(module, args, output):
        if id(module) not in seen:
            seen.add(id(module))
            counter.advance()
    handles = [layer.register_forward_hook(reached) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def fx_wraps_dropped():
    """llm-compressor 0.14's sequential tracing registers torch.fx.wrap'ed functions whose globals hold the traced
    model as `self`; torch.fx keeps every registration for good (torch.fx._symbolic_trace._wrapped_fns_to_patch), and
    the calibrated model with it (0.37 of a copy stayed alive in tests/test_export_memory.py). Those the block
    registered are dropped after it, by hand: neither library offers a call that frees them."""
    from torch.fx import _symbolic_trace
    patched = _symbolic_trace._wrapped_fns_to_patch
    before = set(patched)
    try:
        yield
    finally:
        for key in set(patched) - before:
            del patched[key]


def quantize(merged_dir: Path, formatted_dir: Path, method: Method, cfg: QuantizeSection, cutoff_len: int,
             out: Path, precision: Precision | None = None) -> dict:
    """Calibrate on the formatted eval data, save the compressed checkpoint to `out`, reload and measure it. The
    merged model is calibrated in the policy's inference dtype by llm-compressor's sequential onloading (loaded in
    CPU RAM, one decoder layer at a time on the GPU), and both models are measured so, one after the other, each
    spread over the GPUs, then CPU RAM: perplexity on the eval rows, and each one's greedy answer to the first eval
    row's question (the check compares them). One model-sized copy is alive at a time."""
    dtype = infer_dtype(precision or Precision())
    tokenizer = load_tokenizer(merged_dir)
    evaluation = read_view(formatted_dir, "sft")["eval"]
    calibration = evaluation.select(range(min(cfg.calibration_samples, len(evaluation)))).map(
        lambda row: {"attention_mask": [1] * len(row["input_ids"])}).select_columns(["input_ids", "attention_mask"])
    model = calibration_model(merged_dir, dtype)
    check_group_size(model, cfg.group_size)
    with awq_cpu_compat(), layer_progress(model), fx_wraps_dropped():
        oneshot(model=model, dataset=calibration, recipe=recipe_for(method, cfg), max_seq_length=cutoff_len,
                num_calibration_samples=len(calibration), shuffle_calibration_samples=False)
    progress.enter(progress.current() or "quantize", "saving")
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    del model  # the calibrated model goes before either measured model loads (llm-compressor's session holds it too)
    reset_session()
    release()
    progress.enter(progress.current() or "quantize", "measuring")
    prompt, question = eval_question(evaluation, tokenizer)
    quantized = measured(out, dtype, evaluation, tokenizer, prompt, question)
    merged = measured(merged_dir, dtype, evaluation, tokenizer, prompt, question)
    return {"method": method, "eval_perplexity": round(quantized["ppl"], 4),
            "merged_eval_perplexity": round(merged["ppl"], 4), "ppl_ratio": round(quantized["ppl"] / merged["ppl"], 4),
            "size_bytes": dir_size(out), "merged_size_bytes": dir_size(merged_dir), "sample": quantized["sample"],
            "merged_sample": merged["sample"], "reloaded_quant_method": quantized["quant_method"],
            **precision_metrics(dtype)}


def calibration_model(merged_dir: Path, dtype: torch.dtype):
    """The merged model as llm-compressor's sequential pipeline wants it for a model larger than the GPU: in CPU
    RAM in `dtype` (its layers onloaded to the GPU one at a time while calibrating; llm-compressor's
    big_models_with_sequential_onloading loads with device_map=None so); the CPU is the device on a CPU-only machine."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(merged_dir, trust_remote_code=False, dtype=dtype)


def measured(model_dir: Path, dtype: torch.dtype, evaluation, tokenizer, prompt, question) -> dict:
    """One model's perplexity on the eval rows, its greedy answer to the eval question and its reported quantization
    method, the model freed before this returns."""
    model = load_causal_lm(model_dir, dtype, spread=True)
    facts = {"ppl": perplexity(model, evaluation, tokenizer.pad_token_id),
             "sample": sample_answer(model, tokenizer, prompt, question), "quant_method": quant_method(model.config)}
    del model
    release()
    return facts


def quant_method(config) -> str | None:
    """The quantization method a loaded model reports ("compressed-tensors"), or None if it loaded unquantized."""
    method = getattr(getattr(config, "quantization_config", None), "quant_method", None)
    return getattr(method, "value", method)


def quantize_with(run: "StageRun", method: Method) -> dict:
    """gptq_model's and awq_model's entry point: the merged model quantized, with lineage.json and a model card."""
    from engine.export.docs import write_export_docs
    from engine.store.lineage import export_lineage
    merged = run.inputs["merged_model"]
    metrics = quantize(merged, run.inputs["formatted_data"], method, run.recipe.quantize, run.recipe.data.cutoff_len,
                       run.out, Precision.of(run.recipe.model))
    parents = [p.name for p in run.inputs.values()]
    write_export_docs(run.out, f"{method.upper()} 4-bit export of {merged.name}",
                      export_lineage(run.home.catalog(), parents), metrics, run.stage)
    return metrics


def quantize_gptq(run: "StageRun") -> dict:
    """gptq_model's entry point."""
    return quantize_with(run, "gptq")


def quantize_awq(run: "StageRun") -> dict:
    """awq_model's entry point."""
    return quantize_with(run, "awq")
