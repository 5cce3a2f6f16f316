"""Row tables on disk: Parquet files with a fixed schema, so an empty table still has its columns."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROW_COLUMNS = ["source", "row_id", "content_hash", "format", "kind", "messages", "chosen", "rejected", "tools", "label"]
QUARANTINE_COLUMNS = ["source", "row_id", "stage", "reason", "detail"]
CLUSTER_COLUMNS = ["cluster_id", "kind", "kept_row_id", "removed_row_id", "similarity"]


def write_rows(rows: list[dict], path: Path, columns: list[str]) -> Path:
    schema = pa.schema([(c, pa.float64() if c == "similarity" else pa.string()) for c in columns])
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema), path)
    return path


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()
