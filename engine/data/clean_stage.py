"""clean_data's entry point: raw_data's rows through the recipe's cleaning steps (engine/data/clean.py) on this
machine's cores or on Ray (engine/data/ray_engine.py), to the artifact's sharded tables."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from engine.data.clean import token_counter
from engine.data.clean_stream import stream_clean
from engine.data.ray_engine import ray_clean
from engine.runtime.pool import worker_count
from engine.store.tables import (CLUSTER_COLUMNS, QUARANTINE_COLUMNS, REWRITE_COLUMNS, ROW_COLUMNS, ShardWriter,
                                 table_files, table_rows)

if TYPE_CHECKING:
    from engine.stage import StageRun


def clean_raw_data(run: "StageRun") -> dict:
    """clean_data's entry point: the recipe's cleaning steps over raw_data's rows; kept rows, quarantine, duplicate
    clusters and every rewritten text to Parquet. Returns the cleaning report. Token limits count with the recipe's
    local checkpoint's tokenizer (the tiny preset's tokenizer is trained on this stage's output)."""
    cfg = run.recipe.clean
    raw = run.inputs["raw_data"]
    source_order = list(json.loads((raw / "manifest.json").read_text())["metrics"]["by_source"])
    count_tokens = token_counter(run.recipe.model.model_name_or_path) if cfg.counts_tokens() else None
    if run.recipe.data.engine == "ray":  # the same result on a Ray cluster
        return ray_clean(table_files(raw, "rows"), run.out, cfg, source_order, count_tokens, run.recipe.data.memory_gb,
                         work_dir=run.out, address=run.recipe.data.ray_address)
    workers = worker_count(run.recipe.data.preprocessing_num_workers, table_rows(raw, "rows"))
    # batch by batch, through part files in a temporary directory of run.out, gone before publishing
    return stream_clean(raw, run.out, cfg, source_order, count_tokens, run.recipe.data.memory_gb, work_dir=run.out,
                        workers=workers)


def write_result(out, result) -> dict:
    """A CleanResult's tables as the artifact's shards (the in-memory `clean()`'s, for comparisons); its report."""
    for name, records, columns in (("rows", result.rows, ROW_COLUMNS),
                                   ("quarantine", result.quarantine, QUARANTINE_COLUMNS),
                                   ("clusters", result.clusters, CLUSTER_COLUMNS),
                                   ("rewrites", result.rewrites, REWRITE_COLUMNS)):
        with ShardWriter(out, name, columns) as table:
            table.add_all(records)
    return result.report
