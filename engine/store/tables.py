"""Row tables on disk: Parquet files with a fixed schema, so an empty table still has its columns.

A table of an artifact is sharded: `<name>-00000.parquet`, `<name>-00001.parquet`, ... of at most SHARD_ROWS rows
each, written and read in Arrow record batches (`ShardWriter`, `table_batches`), so no stage holds a corpus whole.
An artifact written before sharding has one `<name>.parquet`; `table_files` reads either.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
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


def read_rows(path: Path) -> list[dict]:
    """One Parquet file's rows as dicts (a small table, or a test's)."""
    return pq.read_table(path).to_pylist()


def table_dicts(folder: Path, name: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Table `name`'s rows one by one as dicts, read a record batch at a time."""
    for batch in table_batches(folder, name, columns):
        yield from batch.to_pylist()


def rows_by_source(folder: Path, name: str) -> Counter:
    """source -> the rows table `name` of an artifact holds of it (its source column alone, a batch at a time)."""
    counts: Counter = Counter()
    for batch in table_batches(folder, name, ["source"]):
        counts.update(batch.column(0).to_pylist())
    return counts


SHARD_ROWS = 100_000  # rows per shard file: a Ray block or a worker's share of a big corpus, a few MB of Parquet
BATCH_ROWS = 10_000   # rows per record batch read or written: what one step holds of a table at a time
SHARD_NAME = re.compile(r"(?P<name>.+)-(?P<number>\d{5})\.parquet")


def shard_path(folder: Path, name: str, number: int) -> Path:
    return folder / f"{name}-{number:05d}.parquet"


def table_files(folder: Path, name: str) -> list[Path]:
    """The Parquet files of table `name` in an artifact folder, in row order: its shards, or the one `<name>.parquet`
    of an artifact written before sharding; [] where the table is not there."""
    shards = sorted(f for f in folder.glob(f"{name}-*.parquet")
                    if (m := SHARD_NAME.fullmatch(f.name)) and m["name"] == name)
    if shards:
        return shards
    single = folder / f"{name}.parquet"
    return [single] if single.exists() else []


def streamed_parquet(file: Path) -> pq.ParquetFile:
    """A Parquet file opened to be read batch after batch. Without pre-buffering: pyarrow's default keeps every row
    group's bytes it has read until the file is closed, a whole file's worth of memory by the last batch (6 GB for
    clean_data's 10M-row part file)."""
    return pq.ParquetFile(file, pre_buffer=False)


def parquet_batches(files: Iterable[Path], batch_rows: int, columns: list[str] | None = None
                    ) -> Iterator[pa.RecordBatch]:
    """The rows of `files`, file after file, in record batches of at most `batch_rows` (streamed: see above)."""
    for file in files:
        yield from streamed_parquet(file).iter_batches(batch_size=batch_rows, columns=columns)


def table_batches(folder: Path, name: str, columns: list[str] | None = None,
                  batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Table `name`'s rows in record batches of at most `batch_rows`, shard after shard, in row order."""
    yield from parquet_batches(table_files(folder, name), batch_rows, columns)


def rows_with_ids(folder: Path, name: str, ids: Iterable[str], columns: list[str] | None = None) -> Iterator[dict]:
    """Table `name`'s rows whose row_id is one of `ids`, in table order, filtered a batch at a time in Arrow (only
    the rows asked for become Python)."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    for batch in table_batches(folder, name, columns):
        yield from batch.filter(pc.is_in(batch.column("row_id"), value_set=wanted)).to_pylist()


def first_rows(folder: Path, name: str, count: int) -> list[dict]:
    """Table `name`'s first `count` rows as dicts (a sample for a report), read in batches of `count` rows."""
    rows: list[dict] = []
    for batch in table_batches(folder, name, batch_rows=max(count, 1)):
        if len(rows) >= count:
            break
        rows += batch.to_pylist()[:count - len(rows)]
    return rows


def read_table(folder: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """Table `name` whole, as one Arrow table (for tables that are small by nature: clusters, a report's rows)."""
    files = table_files(folder, name)
    if not files:
        raise FileNotFoundError(f"{folder}: no table {name!r} ({name}-*.parquet or {name}.parquet)")
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def table_rows(folder: Path, name: str) -> int:
    """How many rows table `name` holds, from the Parquet footers alone."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in table_files(folder, name))


class ShardWriter:
    """Writes table `name` of an artifact as shards of at most `shard_rows` rows, from row dicts (`add`) or Arrow
    batches (`write`); at least one shard, so an empty table still has its schema. `count` is the rows written."""

    def __init__(self, folder: Path, name: str, columns: list[str], shard_rows: int = SHARD_ROWS,
                 batch_rows: int = BATCH_ROWS):
        self.folder, self.name, self.schema = folder, name, schema_of(columns)
        self.columns, self.shard_rows, self.batch_rows = columns, shard_rows, batch_rows
        self.pending: list[dict] = []
        self.count, self.in_shard, self.shards = 0, 0, 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, row: dict) -> None:
        self.pending.append({c: row.get(c) for c in self.columns})
        self.count += 1
        if len(self.pending) >= self.batch_rows:
            self.flush()

    def add_all(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, []
            self._shards(pa.Table.from_pylist(pending, schema=self.schema))

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Rows already in Arrow, in this table's columns (after any added ones)."""
        self.flush()
        table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        self.count += table.num_rows
        self._shards(table.select(self.columns).cast(self.schema))

    def _shards(self, table: pa.Table) -> None:
        """`table` split across shards at `shard_rows`."""
        at = 0
        while at < table.num_rows:
            if self.writer is None or self.in_shard >= self.shard_rows:
                self._next_shard()
            take = min(self.shard_rows - self.in_shard, table.num_rows - at)
            self.writer.write_table(table.slice(at, take))
            self.in_shard, at = self.in_shard + take, at + take

    def _next_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = pq.ParquetWriter(shard_path(self.folder, self.name, self.shards), self.schema)
        self.shards, self.in_shard = self.shards + 1, 0

    def close(self) -> None:
        self.flush()
        if self.writer is None:
            self._next_shard()  # an empty table: one shard with the schema and no rows
        self.writer.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
