"""clean_data's local engine, streamed: `clean()`'s tables and report (engine/data/clean.py), in memory bounded by
the batch size and data.memory_gb rather than by the corpus.

- order: raw_data's shards are read in record batches when their rows are already in corpus order, else sorted by
  DuckDB over the Parquet files (spilling to disk past its memory limit); a row's position is its index in that order;
- a segment of row-local steps runs batch by batch on the pool; its kept rows go to a temporary part file (Parquet,
  messages as JSON text, with positions) that the next segment reads back batch by batch;
- a dedup segment reads its part file once for the keys (exact) or per kind for the texts (near), which go through
  dedup.py's out-of-core path (digests, signatures on disk), then once more to write the kept rows and record the
  removed ones: the kept member of each cluster is its lowest position, as in memory;
- quarantine and rewrites are spooled with their ORDER and written at the end in (step, position) order by DuckDB;
  clusters are written as they are found, in `clean()`'s order.
The part files and spools live in a temporary directory under `work_dir`, removed on every exit path.
"""

from __future__ import annotations

import json
import tempfile
from array import array
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.clean import (NEAR_KINDS, ORDER, POSITION, ROW_LOCAL_STEPS, BatchOutcome, Combined, Tally,
                               _clean_in_worker, cluster_record, corpus_order, exact_detail, exact_key,
                               near_detail, near_text, quarantine_record, segments, stored_row)
from engine.data.dedup import exact_duplicates, near_duplicate_clusters
from engine.runtime.pool import OrderedPool
from engine.store.tables import (CLUSTER_COLUMNS, QUARANTINE_COLUMNS, REWRITE_COLUMNS, ROW_COLUMNS, ShardWriter,
                                 parquet_batches, table_files)

if TYPE_CHECKING:
    from engine.recipe import CleanSection

STREAM_MEMORY_GB = 1.0  # dedup's and the sort's bound where data.memory_gb is unset: the streamed path always spills
PART_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_COLUMNS] + [(POSITION, pa.int64())])
ORDER_COLUMNS = ("_step", "_pos", "_seq")  # a spooled record's ORDER, and its place among records of equal ORDER


def stream_clean(raw: Path, out: Path, cfg: "CleanSection", source_order: list[str],
                 count_tokens: Callable[[str], int] | None = None, memory_gb: float | None = None,
                 work_dir: Path | None = None, batch_rows: int = 10_000, workers: int = 1) -> dict:
    """`clean()` over raw_data's rows table in folder `raw`, its rows, quarantine, clusters and rewrites tables
    written as shards to `out`: the same records in the same order, and the same report (returned)."""
    with tempfile.TemporaryDirectory(prefix=".clean-stream-", dir=work_dir) as tmp:
        return StreamClean(Path(tmp), cfg, count_tokens, memory_gb or STREAM_MEMORY_GB, batch_rows,
                           workers).run(table_files(raw, "rows"), out, source_order)


class Spool:
    """Records with their ORDER, appended to a Parquet file, read back sorted by (step, position) with DuckDB."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns, self.count = path, columns, 0
        self.schema = pa.schema([(c, pa.string()) for c in columns] + [(c, pa.int64()) for c in ORDER_COLUMNS])
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

    def sorted_batches(self, con: duckdb.DuckDBPyConnection, batch_rows: int) -> Iterator[pa.RecordBatch]:
        if self.writer is None:
            return
        self.writer.close()
        reader = con.sql(f"SELECT {', '.join(self.columns)} FROM read_parquet($1) ORDER BY {', '.join(ORDER_COLUMNS)}",
                         params=[str(self.path)]).to_arrow_reader(batch_rows)
        yield from reader


class Part:
    """A segment's kept rows (parsed, with positions), written to a Parquet file and read back in batches."""

    def __init__(self, path: Path):
        self.path, self.count = path, 0
        self.writer = pq.ParquetWriter(path, PART_SCHEMA)

    def add(self, rows: list[dict], parsed: bool = True) -> None:
        if rows:
            stored = rows if not parsed else [{**r, "messages": json.dumps(r["messages"], ensure_ascii=False)}
                                              for r in rows]
            self.writer.write_table(pa.Table.from_pylist(stored, schema=PART_SCHEMA))
            self.count += len(rows)

    def close(self) -> "Part":
        self.writer.close()
        return self

    def batches(self, batch_rows: int, columns: list[str] | None = None, parsed: bool = True) -> Iterator[list[dict]]:
        for batch in parquet_batches([self.path], batch_rows, columns):
            if batch.num_rows:
                rows = batch.to_pylist()
                yield [{**r, "messages": json.loads(r["messages"])} for r in rows] if parsed else rows

    def rows(self, batch_rows: int, columns: list[str] | None = None) -> Iterator[dict]:
        for batch in self.batches(batch_rows, columns):
            yield from batch


def _exact_keys(rows: list[dict], step) -> list[str]:
    return [exact_key({**r, "messages": json.loads(r["messages"])}, step) for r in rows]


def _stored_rows(rows: list[dict]) -> list[dict]:
    return [stored_row({**r, "messages": json.loads(r["messages"])}) for r in rows]


class StreamClean:
    """One streamed clean: ordered input, each segment from one part file to the next, then the tables."""

    def __init__(self, work: Path, cfg, count_tokens, memory_gb: float, batch_rows: int, workers: int):
        self.work, self.cfg, self.count_tokens = work, cfg, count_tokens
        self.memory_gb, self.batch_rows, self.workers = memory_gb, batch_rows, workers
        self.combined = Combined()
        self.quarantine = Spool(work / "quarantine.parquet", QUARANTINE_COLUMNS)
        self.rewrites = Spool(work / "rewrites.parquet", REWRITE_COLUMNS)
        self.parts: list[Part] = []
        self.con = duckdb.connect()
        self.con.execute(f"SET memory_limit = '{max(int(memory_gb * 1024 / 2), 64)}MB'")  # half: the rest is ours
        self.con.execute("SET temp_directory = ?", [str(work / "duckdb")])

    def run(self, files: list[Path], out: Path, source_order: list[str]) -> dict:
        try:
            rows_in_by_source, in_order = self.survey(files, source_order)
            count = sum(rows_in_by_source.values())
            workers = min(self.workers, -(-count // self.batch_rows))  # no more processes than batches
            with OrderedPool(workers, self.count_tokens) as pool:
                self.pool = pool
                return self.passes(files, out, source_order, rows_in_by_source, in_order)
        finally:  # on an error too: no file left open in the directory about to be removed
            for writer in [s.writer for s in (self.quarantine, self.rewrites)] + [p.writer for p in self.parts]:
                if writer is not None and writer.is_open:
                    writer.close()
            self.con.close()

    def passes(self, files: list[Path], out: Path, source_order: list[str], rows_in_by_source: Counter,
               in_order: bool) -> dict:
        batches = self.ordered(files, source_order, in_order)
        current: Part | None = None
        with ShardWriter(out, "clusters", CLUSTER_COLUMNS) as self.clusters:
            for first, steps in segments(self.cfg.steps):
                if steps[0].step in ROW_LOCAL_STEPS:
                    previous, current = current, self.row_local(
                        batches if current is None else current.batches(self.batch_rows), steps, first)
                else:  # a dedup reads a part file several times: raw's ordered rows are written to one first
                    previous = current or self.materialized(batches)
                    current = self.exact(previous, steps[0], first) if steps[0].step == "exact_dedup" \
                        else self.near(previous, steps[0], first)
                if previous is not None:
                    previous.path.unlink()  # read no more
        tally = Tally()
        with ShardWriter(out, "rows", ROW_COLUMNS) as table:
            jobs = ((rows,) for rows in (current.batches(self.batch_rows, parsed=False) if current is not None
                                         else self.unparsed(batches)))
            for final in self.on_pool(_stored_rows, jobs):
                tally.kept(final)
                table.add_all(final)
        for name, spool, columns, count_of in (("quarantine", self.quarantine, QUARANTINE_COLUMNS, tally.quarantined),
                                               ("rewrites", self.rewrites, REWRITE_COLUMNS, tally.rewritten)):
            with ShardWriter(out, name, columns) as table:
                for batch in spool.sorted_batches(self.con, self.batch_rows):
                    records = batch.to_pylist()
                    count_of(records)
                    table.add_all(records)  # row groups as `clean()`'s writer makes them: the same bytes
        return self.combined.report(tally, rows_in_by_source, source_order)

    def survey(self, files: list[Path], source_order: list[str]) -> tuple[Counter, bool]:
        """Rows in by source (in raw's row order, as `clean()` counts them), and whether raw's rows are already in
        corpus order (from the source and row_id columns alone)."""
        key, counts, previous, in_order = corpus_order(source_order), Counter(), None, True
        for batch in parquet_batches(files, self.batch_rows, ["source", "row_id"]):
            for source, row_id in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                counts[source] += 1
                this = key({"source": source, "row_id": row_id})
                in_order, previous = in_order and (previous is None or previous <= this), this
        return counts, in_order

    def ordered(self, files: list[Path], source_order: list[str], in_order: bool) -> Iterator[list[dict]]:
        """raw's rows in corpus order, parsed, each with its position, in batches of at most batch_rows."""
        if in_order:
            reader = parquet_batches(files, self.batch_rows)
        else:  # DuckDB's sort spills past its memory limit; row_position's split of a row id, in SQL
            reader = self.con.sql(
                "SELECT * FROM read_parquet($1) ORDER BY coalesce(list_position($2::VARCHAR[], source) - 1, $3), "
                "regexp_extract(row_id, '^(.*):', 1), CAST(regexp_extract(row_id, ':([^:]*)$', 1) AS HUGEINT)",
                params=[[str(f) for f in files], source_order, len(source_order)]).to_arrow_reader(self.batch_rows)
        position = 0
        for batch in reader:
            if batch.num_rows:
                yield [{**r, "messages": json.loads(r["messages"]), POSITION: i}
                       for i, r in enumerate(batch.to_pylist(), position)]
                position += batch.num_rows

    @staticmethod
    def unparsed(batches: Iterator[list[dict]]) -> Iterator[list[dict]]:
        """Ordered batches with `messages` back as JSON text (where no step ran)."""
        for rows in batches:
            yield [{**r, "messages": json.dumps(r["messages"], ensure_ascii=False)} for r in rows]

    def next_part(self) -> Part:
        self.parts.append(Part(self.work / f"part-{len(self.parts) + 1}.parquet"))
        return self.parts[-1]

    def materialized(self, batches: Iterator[list[dict]]) -> Part:
        part = self.next_part()
        for rows in batches:
            part.add(rows)
        return part.close()

    def row_local(self, batches: Iterator[list[dict]], steps: list, first: int) -> Part:
        part = self.next_part()
        jobs = ((rows, steps, first) for rows in batches)
        for outcome in self.on_pool(_clean_in_worker, jobs):
            self.combined.add(BatchOutcome([], [], [], outcome.pii_counts, outcome.steps), first)
            self.quarantine.add(outcome.quarantine)
            self.rewrites.add(outcome.rewrites)
            part.add(outcome.rows)
        return part.close()

    def on_pool(self, fn: Callable, jobs: Iterator[tuple]) -> Iterator:
        """fn(*job) for every job, in order, on the pool (one for every pass, its workers started once)."""
        return self.pool.map(fn, jobs)

    def exact(self, part: Part, step, first: int) -> Part:
        jobs = ((rows, step) for rows in part.batches(self.batch_rows, parsed=False))
        keys = (key for batch in self.on_pool(_exact_keys, jobs) for key in batch)  # no length: spilled
        found = {dup: ("exact", kept, 1.0) for kept, dup in exact_duplicates(keys, self.memory_gb, self.work)}
        return self.removing(part, step, first, found, "exact_duplicate", lambda kept, _: exact_detail(kept))

    def near(self, part: Part, step, first: int) -> Part:
        bands_rows = (step.bands, step.rows) if step.bands else None
        kinds = set(pc.unique(pq.read_table(part.path, columns=["kind"]).column("kind")).to_pylist())
        found = {}
        for kind in (k for k in NEAR_KINDS if k in kinds):
            index = array("q")  # the part's row index of each text compared

            def texts(kind=kind, index=index):
                for i, row in enumerate(part.rows(self.batch_rows)):
                    if (text := near_text(row, kind, step)) is not None:
                        index.append(i)
                        yield text
            for a, b, jaccard in near_duplicate_clusters(texts(), step.threshold, step.num_perm, step.shingle_size,
                                                         bands_rows, self.memory_gb, self.work):
                found[index[b]] = (kind, index[a], jaccard)
        return self.removing(part, step, first, found, "near_duplicate", near_detail)

    def removing(self, part: Part, step, first: int, found: dict[int, tuple[str, int, float]], reason: str,
                 detail: Callable[[dict, float], str]) -> Part:
        """The part's rows but those in `found` (row index -> (cluster kind, kept row's index, similarity)), each
        recorded in quarantine and clusters (in `clean()`'s order: by kind in NEAR_KINDS order, then index)."""
        kept_ids = {kept: None for _, kept, _ in found.values()}
        out, clusters = self.next_part(), {kind: [] for kind in ("exact", *NEAR_KINDS)}
        at = 0  # the part's index of the batch's first row
        for rows in part.batches(self.batch_rows, parsed=False):  # rows copied as they are, messages as text
            keep, dropped = [], []
            for i, row in enumerate(rows, at):
                if i in kept_ids:
                    kept_ids[i] = {"row_id": row["row_id"]}
                if i not in found:
                    keep.append(row)
                    continue
                kind, kept, similarity = found[i]
                dropped.append(quarantine_record(row, step.step, first, reason, detail(kept_ids[kept], similarity)))
                clusters[kind].append(cluster_record("exact" if kind == "exact" else "near", kept_ids[kept], row,
                                                     similarity))
            self.quarantine.add(dropped)
            out.add(keep, parsed=False)
            at += len(rows)
        for records in clusters.values():
            self.clusters.add_all(records)
        removed = len(found)
        self.combined.add(BatchOutcome([], [], [], Counter(), [
            {"step": step.step, "rows_in": part.count, "rows_out": part.count - removed,
             "removed": {reason: removed} if removed else {}, "modified": 0}]), first)
        return out.close()
