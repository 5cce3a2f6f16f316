"""Merge base + SFT stage (+ DPO stage, when the recipe runs it) into full safetensors weights, and prove it changed nothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel

from engine.data.format import read_view
from engine.models.device import (Precision, export_dtype, infer_dtype, name, precision_metrics, release,
                                  to_device)
from engine.evaluate.measure import perplexity, sft_batch
from engine.models.load import load_causal_lm, load_tokenizer, load_with_adapters, model_dir, smoke_generate

if TYPE_CHECKING:
    from engine.stage import StageRun


def trained_model(base_dir: Path, stages: list[Path], dtype: torch.dtype):
    """The model the stages trained, adapters applied on the fly: the last stage's full weights when it trained
    a full model, else base + the stages' adapters in order (no stage: the base model itself)."""
    if not stages:
        return load_causal_lm(base_dir, dtype, spread=True).eval()
    *earlier, last = stages
    if not (last / "adapter_config.json").is_file():
        return load_causal_lm(last, dtype, spread=True).eval()
    # the last adapter stays unmerged, so that the reference logits are the adapter model's own
    return PeftModel.from_pretrained(load_with_adapters(base_dir, *earlier, dtype=dtype, spread=True), last).eval()


def merge(base_dir: Path, stages: list[Path], formatted_dir: Path, out: Path, check_rows: int = 16,
          precision: Precision | None = None) -> dict:
    """Write the merged model, tokenizer, chat template and generation config to `out`, its weights in the base
    checkpoint's dtype (or the recipe's explicit infer_dtype); the merge itself computes in the policy's inference
    dtype, spread over the GPUs, then CPU RAM; the trained model is freed before the saved one is reloaded (one
    model-sized copy alive at a time: a 70B-class model on a box that holds its weights once).

    `stages`: the training stages' weights in order (SFT, DPO), those the recipe runs; none: the base model (pt_model:
    with model.adapter_name_or_path merged in) is exported as it is.

    Returns the largest absolute logit difference between the trained model (adapters applied on the fly, or
    the last stage's full weights) and the reloaded merged model, both run in the inference dtype. (Weights saved
    in a lower precision than they were computed in differ by that rounding: about 1e-2 in bfloat16.)
    """
    precision = precision or Precision()
    dtype, saved = infer_dtype(precision), export_dtype(precision, base_dir)
    tokenizer = load_tokenizer(base_dir)
    evaluation = read_view(formatted_dir, "sft")["eval"]
    batch = sft_batch(evaluation, check_rows, tokenizer.pad_token_id)
    trained = trained_model(base_dir, stages, dtype)
    inputs = to_device({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, trained)
    with torch.no_grad():
        trained_logits = trained(**inputs).logits.float().cpu()
    merged = trained.merge_and_unload() if isinstance(trained, PeftModel) else trained
    merged.to(saved).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del trained, merged  # the check needs only the logits now: one model-sized copy alive at a time
    release()
    reloaded = load_causal_lm(out, dtype, spread=True).eval()
    with torch.no_grad():
        diff = (reloaded(**inputs).logits.float().cpu() - trained_logits).abs().max().item()
    return {"max_logit_diff": diff, "eval_perplexity": round(perplexity(reloaded, evaluation, tokenizer.pad_token_id), 4),
            "size_bytes": dir_size(out), "sample_answer": smoke_generate(reloaded, tokenizer),
            **precision_metrics(dtype, saved_dtype=name(saved))}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def merge_model(run: "StageRun") -> dict:
    """merged_model's entry point: the merge, with lineage.json and a model card naming what made it."""
    from engine.export.docs import write_export_docs
    from engine.store.lineage import export_lineage
    from engine.models.load import trained_weights
    base = model_dir(run.inputs["pt_model"])
    stages = [trained_weights(run.inputs[s]) for s in ("sft_adapter", "dpo_adapter", "ppo_adapter", "grpo_adapter")
              if s in run.inputs]
    metrics = merge(base, stages, run.inputs["formatted_data"], run.out, precision=Precision.of(run.recipe.model))
    parents = [p.name for p in run.inputs.values()]
    write_export_docs(run.out, f"Merged model of {base.name}", export_lineage(run.home.catalog(), parents), metrics,
                      run.stage)
    return metrics
