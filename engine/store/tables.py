"""Row tables on disk: Parquet files with a fixed schema, so an empty table still has its columns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROW_COLUMNS = ["source", "row_id", "content_hash", "format", "kind", "messages", "chosen", "rejected", "tools", "label"]
QUARANTINE_COLUMNS = ["source", "row_id", "stage", "reason", "detail"]
REWRITE_COLUMNS = ["source", "row_id", "step", "field", "before", "after"]  # one row per text a clean step changed
CLUSTER_COLUMNS = ["cluster_id", "kind", "kept_row_id", "removed_row_id", "similarity"]


def schema_of(columns: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.float64() if c == "similarity" else pa.string()) for c in columns])


def write_rows(rows: list[dict], path: Path, columns: list[str]) -> Path:
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema_of(columns)),
                   path)
    return path


class RowWriter:
    """Appends rows to a Parquet file in batches, so a table never has to be whole in memory."""

    def __init__(self, path: Path, columns: list[str], batch: int = 10_000):
        self.columns, self.batch, self.pending, self.count = columns, batch, [], 0
        self.writer = pq.ParquetWriter(path, schema_of(columns))

    def add(self, row: dict) -> None:
        self.pending.append({c: row.get(c) for c in self.columns})
        self.count += 1
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.writer.schema))
            self.pending = []

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        self.writer.close()


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def rows_by_source(path: Path) -> Counter:
    """source -> the rows a written row or quarantine table holds of it (its source column alone is read)."""
    return Counter(pq.read_table(path, columns=["source"]).column("source").to_pylist())
