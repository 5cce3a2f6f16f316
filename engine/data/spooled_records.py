"""What a streamed clean records besides its kept rows, shared by the local (clean_stream.py) and Ray (ray_engine.py)
engines: per-step and pii counts in memory (clean.Combined), quarantine and rewrites spooled to Parquet with their
ORDER and written at the end in (step, position) order by DuckDB, within data.memory_gb."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from engine.data.clean import ORDER, BatchOutcome, Combined, Tally
from engine.store.bounded_sql import bounded_duckdb
from engine.store.tables import QUARANTINE_COLUMNS, REWRITE_COLUMNS, ShardWriter, schema_of

ORDER_COLUMNS = ("_step", "_pos", "_seq")  # a spooled record's ORDER, and its place among records of equal ORDER


class Spool:
    """Records with their ORDER, appended to a Parquet file, read back sorted by (step, position) with DuckDB."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns, self.count = path, columns, 0
        self.schema = pa.schema(list(schema_of(columns)) + [(c, pa.int64()) for c in ORDER_COLUMNS])
        self.writer: pq.ParquetWriter | None = None

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema)
        table = {c: [r[c] for r in records] for c in self.columns}
        table |= {"_step": [r[ORDER][0] for r in records], "_pos": [r[ORDER][1] for r in records],
                  "_seq": list(range(self.count, self.count + len(records)))}
        self.writer.write_table(pa.Table.from_pydict(table, schema=self.schema))
        self.count += len(records)

    def close(self) -> None:
        """The file closed where it is open (on an error path too: before its directory goes)."""
        if self.writer is not None and self.writer.is_open:
            self.writer.close()

    def sorted_batches(self, con: duckdb.DuckDBPyConnection, batch_rows: int) -> Iterator[pa.RecordBatch]:
        if self.writer is None:
            return
        self.writer.close()
        reader = con.sql(f"SELECT {', '.join(self.columns)} FROM read_parquet($1) ORDER BY {', '.join(ORDER_COLUMNS)}",
                         params=[str(self.path)]).to_arrow_reader(batch_rows)
        yield from reader


class SpooledRecords:
    """A streamed clean's counts, quarantine and rewrites, in directory `work`; `con`, its DuckDB within `memory_gb`,
    also sorts what the engine spools itself (raw's rows, a dedup's clusters)."""

    def __init__(self, work: Path, memory_gb: float):
        self.combined = Combined()
        self.quarantine = Spool(work / "quarantine.parquet", QUARANTINE_COLUMNS)
        self.rewrites = Spool(work / "rewrites.parquet", REWRITE_COLUMNS)
        self.con = bounded_duckdb(memory_gb, work / "duckdb")

    def add_batch(self, outcome: BatchOutcome, first: int) -> None:
        """A batch's outcome from a segment of row-local steps numbered from `first` (its kept rows go elsewhere)."""
        self.combined.add(BatchOutcome([], [], [], outcome.pii_counts, outcome.steps), first)
        self.quarantine.add(outcome.quarantine)
        self.rewrites.add(outcome.rewrites)

    def add_dedup(self, step: str, first: int, rows_in: int, removed: int, reason: str) -> None:
        """A dedup step's counts (its quarantine records are spooled as they are found)."""
        counts = {"step": step, "rows_in": rows_in, "rows_out": rows_in - removed,
                  "removed": {reason: removed} if removed else {}, "modified": 0}
        self.combined.add(BatchOutcome([], [], [], Counter(), [counts]), first)

    def write(self, out: Path, batch_rows: int, tally: Tally, rows_in_by_source: Counter,
              source_order: list[str]) -> dict:
        """The spooled quarantine and rewrites as the artifact's tables, in (step, position) order, counted in
        `tally` (the kept rows already are); the report."""
        for name, spool, columns, count_of in (("quarantine", self.quarantine, QUARANTINE_COLUMNS, tally.quarantined),
                                               ("rewrites", self.rewrites, REWRITE_COLUMNS, tally.rewritten)):
            with ShardWriter(out, name, columns) as table:
                for batch in spool.sorted_batches(self.con, batch_rows):
                    records = batch.to_pylist()
                    count_of(records)
                    table.add_all(records)  # row groups as `clean()`'s writer makes them: the same bytes
        return self.combined.report(tally, rows_in_by_source, source_order)

    def close(self) -> None:
        """Files closed and DuckDB ended, on an error path too (before their directory goes)."""
        self.quarantine.close()
        self.rewrites.close()
        self.con.close()
