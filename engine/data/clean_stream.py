"""clean_data's local engine, streamed: `clean()`'s tables and report (engine/data/clean.py), in memory bounded by
the batch size and data.memory_gb rather than by the corpus.

- order: raw_data's shards are read in record batches when their rows are already in corpus order, else sorted by
  DuckDB over the Parquet files (spilling to disk past its memory limit); a row's position is its index in that order;
- a segment of row-local steps runs batch by batch on the pool; its kept rows go to a temporary part file (Parquet,
  messages as JSON text, with positions) that the next segment reads back batch by batch;
- a dedup segment reads its part file once for the keys (exact) or per kind for the texts (near), which go through
  dedup_spill.py's out-of-core path (digests, signatures on disk) and come back as arrays (`Removals`), then once
  more to write the kept rows and record the removed ones: the kept member of each cluster is its lowest position,
  as in memory;
- quarantine and rewrites are spooled with their ORDER and written at the end in (step, position) order by DuckDB
  (spooled_records.py, as the Ray engine's);
  a dedup step's clusters are spooled per kind and appended at the step's end, in `clean()`'s order.
The part files and spools live in a temporary directory under `work_dir`, removed on every exit path.
"""

from __future__ import annotations

import json
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.clean import (NEAR_KINDS, POSITION, ROW_LOCAL_STEPS, Tally, _clean_in_worker, cluster_record,
                               corpus_order, exact_detail, exact_key, near_detail, near_text, quarantine_record,
                               segments, stored_row)
from engine.data.dedup_spill import spilled_exact_pairs, spilled_near_arrays
from engine.data.minhash import lsh_params
from engine.data.spooled_records import SpooledRecords
from engine.runtime.pool import OrderedPool
from engine.store.tables import CLUSTER_COLUMNS, ROW_COLUMNS, ShardWriter, parquet_batches, schema_of, table_files

if TYPE_CHECKING:
    from engine.recipe import CleanSection

STREAM_MEMORY_GB = 1.0  # dedup's and the sort's bound where data.memory_gb is unset: the streamed path always spills
PART_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_COLUMNS] + [(POSITION, pa.int64())])


def stream_clean(raw: Path, out: Path, cfg: "CleanSection", source_order: list[str],
                 count_tokens: Callable[[str], int] | None = None, memory_gb: float | None = None,
                 work_dir: Path | None = None, batch_rows: int = 10_000, workers: int = 1) -> dict:
    """`clean()` over raw_data's rows table in folder `raw`, its rows, quarantine, clusters and rewrites tables
    written as shards to `out`: the same records in the same order, and the same report (returned)."""
    with tempfile.TemporaryDirectory(prefix=".clean-stream-", dir=work_dir) as tmp:
        return StreamClean(Path(tmp), cfg, count_tokens, memory_gb or STREAM_MEMORY_GB, batch_rows,
                           workers).run(table_files(raw, "rows"), out, source_order)


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


@dataclass
class Removals:
    """A dedup step's removed rows as arrays sorted by the part's row index: removed, the kept row of its cluster,
    their similarity, its kind (an index into `names`). ~25 bytes a duplicate, where a dict of tuples took ~250."""
    removed: np.ndarray
    kept: np.ndarray
    similarity: np.ndarray
    kinds: np.ndarray
    names: tuple[str, ...]

    @staticmethod
    def joined(parts: list["Removals"], names: tuple[str, ...]) -> "Removals":
        """Each kind's removals (a row has one kind: no row is removed twice) as one, sorted by row index."""
        if not parts:
            return Removals(*(np.empty(0, t) for t in (np.int64, np.int64, np.float64, np.int8)), names)
        columns = [np.concatenate([getattr(p, c) for p in parts]) for c in ("removed", "kept", "similarity", "kinds")]
        order = np.argsort(columns[0], kind="stable")
        return Removals(*(c[order] for c in columns), names)


class ClusterSpools:
    """A dedup step's cluster records, one Parquet file per kind while the step runs, appended to the clusters
    table kind after kind at its end (clean()'s order), so no record stays in memory."""

    def __init__(self, work: Path, names: tuple[str, ...]):
        self.paths = [work / f"clusters-{n}.parquet" for n in range(len(names))]
        self.pending: list[list[dict]] = [[] for _ in names]
        self.writers: list[pq.ParquetWriter | None] = [None] * len(names)

    def add(self, kind: int, record: dict) -> None:
        self.pending[kind].append(record)

    def flush(self) -> None:
        for kind, records in enumerate(self.pending):
            if records:
                if self.writers[kind] is None:
                    self.writers[kind] = pq.ParquetWriter(self.paths[kind], schema_of(CLUSTER_COLUMNS))
                self.writers[kind].write_table(pa.Table.from_pylist(records, schema=schema_of(CLUSTER_COLUMNS)))
                self.pending[kind] = []

    def append_to(self, table: ShardWriter, batch_rows: int) -> None:
        self.flush()
        for kind, writer in enumerate(self.writers):
            if writer is not None:
                writer.close()
                for batch in parquet_batches([self.paths[kind]], batch_rows):
                    table.add_all(batch.to_pylist())  # as rows: the table's row groups as if never spooled

    def close(self) -> None:
        for path, writer in zip(self.paths, self.writers, strict=True):
            if writer is not None:
                writer.close()
            path.unlink(missing_ok=True)


class StreamClean:
    """One streamed clean: ordered input, each segment from one part file to the next, then the tables."""

    def __init__(self, work: Path, cfg, count_tokens, memory_gb: float, batch_rows: int, workers: int):
        self.work, self.cfg, self.count_tokens = work, cfg, count_tokens
        self.memory_gb, self.batch_rows, self.workers = memory_gb, batch_rows, workers
        self.records = SpooledRecords(work, memory_gb)
        self.parts: list[Part] = []

    def run(self, files: list[Path], out: Path, source_order: list[str]) -> dict:
        try:
            rows_in_by_source, in_order = self.survey(files, source_order)
            count = sum(rows_in_by_source.values())
            workers = min(self.workers, -(-count // self.batch_rows))  # no more processes than batches
            with OrderedPool(workers, self.count_tokens) as pool:
                self.pool = pool
                return self.passes(files, out, source_order, rows_in_by_source, in_order)
        finally:  # on an error too: no file left open in the directory about to be removed
            self.records.close()
            for part in self.parts:
                if part.writer.is_open:
                    part.writer.close()

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
        return self.records.write(out, self.batch_rows, tally, rows_in_by_source, source_order)

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
            reader = self.records.con.sql(
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
            self.records.add_batch(outcome, first)
            part.add(outcome.rows)
        return part.close()

    def on_pool(self, fn: Callable, jobs: Iterator[tuple]) -> Iterator:
        """fn(*job) for every job, in order, on the pool (one for every pass, its workers started once)."""
        return self.pool.map(fn, jobs)

    def exact(self, part: Part, step, first: int) -> Part:
        jobs = ((rows, step) for rows in part.batches(self.batch_rows, parsed=False))
        keys = (key for batch in self.on_pool(_exact_keys, jobs) for key in batch)  # no length: spilled
        pairs = spilled_exact_pairs(keys, self.memory_gb, self.work)
        found = Removals(pairs[:, 1], pairs[:, 0], np.ones(len(pairs)), np.zeros(len(pairs), np.int8), ("exact",))
        return self.removing(part, step, first, found, "exact_duplicate", lambda kept, _: exact_detail(kept))

    def near(self, part: Part, step, first: int) -> Part:
        bands, rows = (step.bands, step.rows) if step.bands else lsh_params(step.threshold, step.num_perm)
        present = {k for batch in parquet_batches([part.path], self.batch_rows, ["kind"])
                   for k in pc.unique(batch.column("kind")).to_pylist()}
        kinds = [k for k in NEAR_KINDS if k in present]
        found = []
        for code, kind in enumerate(kinds):
            index = array("q")  # the part's row index of each text compared

            def texts(kind=kind, index=index):
                for i, row in enumerate(part.rows(self.batch_rows)):
                    if (text := near_text(row, kind, step)) is not None:
                        index.append(i)
                        yield text
            kept, removed, jaccard = spilled_near_arrays(texts(), step.threshold, step.num_perm, step.shingle_size,
                                                         bands, rows, self.memory_gb, self.work)
            at = np.frombuffer(index, np.int64) if len(index) else np.empty(0, np.int64)
            found.append(Removals(at[removed], at[kept], jaccard, np.full(len(removed), code, np.int8), ()))
        return self.removing(part, step, first, Removals.joined(found, tuple(kinds)), "near_duplicate", near_detail)

    def removing(self, part: Part, step, first: int, found: "Removals", reason: str,
                 detail: Callable[[dict, float], str]) -> Part:
        """The part's rows but those in `found`, each recorded in quarantine and clusters (in `clean()`'s order: by
        kind in NEAR_KINDS order, then index; each kind's records spooled to a file until the step ends)."""
        kept_at, members = np.unique(found.kept, return_inverse=True)
        last_use = np.zeros(len(kept_at), np.int64)  # each kept row's last removed member: its row_id held till then
        np.maximum.at(last_use, members, found.removed)
        done_order, done, kept_ids = np.argsort(last_use, kind="stable"), 0, {}
        out, clusters = self.next_part(), ClusterSpools(self.work, found.names)
        at = 0  # the part's index of the batch's first row
        try:
            for rows in part.batches(self.batch_rows, parsed=False):  # rows copied as they are, messages as text
                keep, dropped = [], []
                span = [at, at + len(rows)]
                here = dict(zip(found.removed[slice(*np.searchsorted(found.removed, span))].tolist(),
                                range(*np.searchsorted(found.removed, span))))  # row index -> its place in `found`
                kept_here = set(kept_at[slice(*np.searchsorted(kept_at, span))].tolist())
                for i, row in enumerate(rows, at):
                    if i in kept_here:
                        kept_ids[i] = row["row_id"]
                    if (j := here.get(i)) is None:
                        keep.append(row)
                        continue
                    kind, first_row = found.names[found.kinds[j]], {"row_id": kept_ids[int(found.kept[j])]}
                    similarity = float(found.similarity[j])
                    dropped.append(quarantine_record(row, step.step, first, reason, detail(first_row, similarity)))
                    clusters.add(found.kinds[j], cluster_record("exact" if kind == "exact" else "near", first_row,
                                                                row, similarity))
                self.records.quarantine.add(dropped)
                out.add(keep, parsed=False)
                clusters.flush()
                at += len(rows)
                while done < len(done_order) and last_use[done_order[done]] < at:
                    kept_ids.pop(int(kept_at[done_order[done]]), None)
                    done += 1
            clusters.append_to(self.clusters, self.batch_rows)
        finally:
            clusters.close()
        self.records.add_dedup(step.step, first, part.count, len(found.removed), reason)
        return out.close()

