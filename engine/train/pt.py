"""Continued pre-training (LLaMA-Factory's stage pt): next-token loss on raw text, before SFT.

Texts are packed end to end into cutoff_len blocks, as LLaMA-Factory's pt stage does. A LoRA is merged
in, so the result is a full model directory every later stage starts from.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from engine.data.ingest import source_records
from engine.data.registry import DatasetEntry, resolve_sources
from engine.data.split import split_of
from engine.errors import DataError
from engine.models.device import Precision, precision_metrics, train_dtype
from engine.models.load import check_adapter, load_tokenizer, merge_adapters, model_dir, point_at
from engine.store.tables import QUARANTINE_COLUMNS, write_rows
from engine.train.adapters import load_trainable, prepare_model
from engine.train.arguments import optimizers, trainer_kwargs
from engine.train.lm_head import trains_on_labelled_positions
from engine.train.sharding import Sharding, sharding_of
from engine.train.skeleton import TrainingStage, eval_loss_after, eval_loss_before, train_stage

if TYPE_CHECKING:
    from engine.recipe import PtSection
    from engine.stage import StageRun


def text_rows(sources: dict[str, tuple[DatasetEntry, Path]]) -> Iterator[tuple[bool, dict]]:
    """(True, {"text", "source", "row_id", "content_hash"}) per usable row, else (False, quarantined row with its reason)."""
    for name, (entry, path) in sources.items():
        column = entry.column("prompt")
        for row_id, record in source_records(name, entry, path):
            text = record.get(column) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                reason = "missing_field" if text is None else ("wrong_type" if not isinstance(text, str) else "empty")
                yield False, {"source": name, "row_id": row_id, "stage": "pt", "reason": reason,
                              "detail": f"column {column!r} must hold non-empty text, got {text!r}"[:200]}
                continue
            yield True, {"text": text.strip(), "source": name, "row_id": row_id,
                         "content_hash": hashlib.sha256(text.strip().encode()).hexdigest()[:16]}


def split_texts(sources: dict[str, tuple[DatasetEntry, Path]], val_size: float,
                seed: int) -> tuple[dict[str, list[str]], list[dict]]:
    """({"train": texts, "eval": texts}, quarantined rows): each usable text once (a repeat is quarantined as an
    exact duplicate), in the split its content hash falls in."""
    rows, quarantine, seen = {"train": [], "eval": []}, [], set()
    for good, row in text_rows(sources):
        if not good:
            quarantine.append(row)
        elif row["content_hash"] in seen:
            quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": "pt",
                               "reason": "exact_duplicate", "detail": f"text hash {row['content_hash']}"})
        else:
            seen.add(row["content_hash"])
            rows[split_of(row["content_hash"], val_size, seed)].append(row["text"])
    return rows, quarantine


def train_pt(base_dir: Path, sources: dict[str, tuple[DatasetEntry, Path]], cfg: PtSection, cutoff_len: int,
             val_size: float, seed: int, out: Path, precision: Precision | None = None,
             say: Callable[[str], None] = print, sharding: Sharding = Sharding()) -> tuple[dict, list[dict]]:
    """Train, save a full model to `out`. Returns (metrics with held-out loss before/after, quarantined rows)."""
    tokenizer = load_tokenizer(base_dir)
    rows, quarantine = split_texts(sources, val_size, seed)
    if not rows["train"] or not rows["eval"]:
        raise DataError(f"pt.dataset {list(sources)}: {len(rows['train'])} train and {len(rows['eval'])} eval texts; "
                        "both splits need text (add rows or change data.val_size)")
    train, evaluation = (Dataset.from_dict({"text": rows[s]}) for s in ("train", "eval"))

    def set_up():
        args = SFTConfig(**trainer_kwargs(cfg, out, precision, sharding), max_length=cutoff_len, packing=True,
                         packing_strategy="wrapped", dataset_text_field="text", completion_only_loss=False)
        model = prepare_model(load_trainable(base_dir, cfg, precision=precision, sharding=sharding), cfg, "CAUSAL_LM",
                              precision)
        return SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                          processing_class=tokenizer, optimizers=optimizers(model, cfg))

    metrics = train_stage(TrainingStage("pt", cfg, out, tokenizer, set_up, before=eval_loss_before,
                                        after=eval_loss_after, merged=True, sharding=sharding), say)
    return {**metrics, "train_texts": len(rows["train"]), "eval_texts": len(rows["eval"]),
            "quarantined": len(quarantine)}, quarantine


def pt_sources(recipe) -> dict[str, tuple[DatasetEntry, Path]]:
    """The registered raw-text sources of pt.dataset (none while continued pre-training is off)."""
    data = recipe.data
    if not recipe.pt.dataset:
        return {}
    return resolve_sources(data.dataset_dir, data.dataset_info, recipe.pt.dataset, data.allowed_roots)


def starting_point(run: "StageRun") -> tuple[Path, dict]:
    """The model continued pre-training (or, when it is off, every later stage) starts from: the base model, or the
    base with model.adapter_name_or_path merged in, written into this artifact."""
    base = model_dir(run.inputs["base_model"])
    adapters = [check_adapter(a) for a in run.recipe.model.adapters()]
    if not adapters:
        return base, {}
    merged = merge_adapters(base, adapters, run.out / START_DIR)
    return merged, {"adapters_merged": [str(a.resolve()) for a in adapters]}


START_DIR = "start"  # base + model.adapter_name_or_path, inside pt_model's artifact


@trains_on_labelled_positions
def train_pt_model(run: "StageRun") -> dict:
    """pt_model's entry point: continued pre-training into a full model, or, while pt.dataset is empty, the base
    model named unchanged (or merged with model.adapter_name_or_path)."""
    base, merged = starting_point(run)
    if not run.recipe.pt.dataset:
        return {**point_at(run.out, base), **merged, "continued_pretraining": False}
    data, precision = run.recipe.data, Precision.of(run.recipe.model)
    metrics, quarantine = train_pt(base, pt_sources(run.recipe), run.recipe.pt, data.cutoff_len, data.val_size,
                                   data.seed, run.out, precision, run.log, sharding_of(run.recipe, "pt"))
    if merged:
        shutil.rmtree(run.out / START_DIR)  # the trained model holds it
    write_rows(quarantine, run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return {**metrics, **merged, "continued_pretraining": True, **precision_metrics(train_dtype(precision))}
