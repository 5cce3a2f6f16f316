"""Ray Data as clean_data's engine (`data.engine: ray`): the recipe's clean steps over raw_data's shards on a Ray
cluster, with the same kept rows, quarantine, clusters, rewrites and report as engine/data/clean.py's `clean()`.

How each part stays what one local pass makes:
- order: rows are sorted on Ray by local's key (source priority, file, row index); a row's POSITION is its block's
  offset (prefix sums over the sorted blocks' row counts) plus its place in the block;
- row-local segments: `map_batches` over batches in block order calling `clean_batch`; each batch returns its kept
  rows and, as one more row, its outcome (quarantine, rewrites, pii counts, per-step counts), which `Combined` adds
  in position order as it adds local's batches;
- exact_dedup: a group-by on the step's key finds every key that more than one row holds; near_dedup: one group-by
  per LSH band (minhash.py's signatures and band keys) finds every bucket of more than one row. Only those candidate
  rows come to the driver, where Cleaner's own exact_dedup / near_dedup run over them (one definition of each step;
  the signature check and min-label components are minhash.py's): every member of a shared bucket is a candidate,
  so the star edges, checks and components over the candidates are the ones a pass over every row makes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.clean import (NEAR_KINDS, ORDER, POSITION, ROW_LOCAL_STEPS, BatchOutcome, Cleaner, CleanResult,
                               Combined, clean_batch, current_hash, dedup_text, row_position, segments, stored_row,
                               whitespace_blind_hash)
from engine.data.minhash import band_keys, lsh_params, signatures
from engine.errors import RecipeError
from engine.runtime.pool import usable_cores
from engine.runtime.progress import LOGGER
from engine.store.tables import ROW_COLUMNS

if TYPE_CHECKING:
    from engine.recipe import CleanSection

OUTCOME = "_outcome"  # a batch's outcome (JSON) in the one extra row it returns; null in kept rows
SORT_KEY = ("_priority", "_head", "_index")
ROWS_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_COLUMNS] + [(POSITION, pa.int64()), (OUTCOME, pa.string())])


def require_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RecipeError("data.engine: ray, but ray is not installed here: expected `pip install -e '.[ray]'` "
                          "(or data.engine: local)") from None
    return ray


def connected(ray, address: str | None) -> bool:
    """Attach to Ray unless this process already is (the asset attaches through dagster-ray): `address`, or a local
    Ray with the machine's cores. True when this call started the connection (and so must end it)."""
    if ray.is_initialized():
        return False
    LOGGER.info(f"clean_data: starting Ray ({address or f'local, {usable_cores()} CPUs'})")
    ray.init(address=address, **({} if address else {"num_cpus": usable_cores()}), include_dashboard=False,
             log_to_driver=True)
    return True


def ray_clean(files: list[Path], cfg: "CleanSection", source_order: list[str],
              count_tokens: Callable[[str], int] | None = None, memory_gb: float | None = None,
              spill_dir: Path | None = None, batch_rows: int = 10_000, address: str | None = None,
              sink: Callable[[list[dict]], None] | None = None) -> CleanResult:
    """`clean()` on Ray over raw_data's Parquet `files`: the same CleanResult. `batch_rows` is both the rows of a
    block and of a map_batches batch (any size gives the same result); `address`: the Ray cluster, None a local one.
    With `sink`, the kept rows (as stored, in order) go to it a block at a time and the result's `rows` is empty:
    the driver never holds the corpus."""
    ray = require_ray()
    started = connected(ray, address)
    options = ray.data.DataContext.get_current().execution_options
    preserved, options.preserve_order = options.preserve_order, True  # batches in position order, as local's
    try:
        return RayClean(ray, cfg, count_tokens, memory_gb, spill_dir, batch_rows).run(files, source_order, sink)
    finally:
        options.preserve_order = preserved
        if started:
            ray.shutdown()


class RayClean:
    """One clean over Ray: ordered rows with positions, then each segment of steps in turn."""

    def __init__(self, ray, cfg, count_tokens, memory_gb, spill_dir, batch_rows):
        self.ray, self.cfg, self.count_tokens = ray, cfg, count_tokens
        self.memory_gb, self.spill_dir, self.batch_rows = memory_gb, spill_dir, batch_rows
        self.combined = Combined()

    def run(self, files: list[Path], source_order: list[str], sink: Callable[[list[dict]], None] | None) -> CleanResult:
        rows_in_by_source = Counter()
        for file in files:  # the source column alone, from each shard
            rows_in_by_source.update(pq.read_table(file, columns=["source"]).column("source").to_pylist())
        count = sum(rows_in_by_source.values())
        current = self.ordered(files, source_order) if count else None
        for first, steps in segments(self.cfg.steps):
            step = steps[0].step
            LOGGER.info(f"clean_data: {', '.join(s.step for s in steps)} on Ray")
            if step in ROW_LOCAL_STEPS:
                current, count = self.row_local(current, steps, first) if current is not None else (None, 0)
            else:
                current, count = self.dedup(current, steps[0], first, count)
        final, rows_out_by_source = [], Counter()
        for batch in kept_batches(current):
            rows_out_by_source.update(r["source"] for r in batch)
            final.extend(batch) if sink is None else sink(batch)
        return self.combined.result(final, rows_in_by_source, source_order, rows_out_by_source)

    def ordered(self, files: list[Path], source_order: list[str]):
        """raw's rows sorted by local's key, each with its POSITION, in blocks of at most batch_rows rows."""
        ray = self.ray
        priority = {name: i for i, name in enumerate(source_order)}
        ds = ray.data.read_parquet([str(f) for f in files]).select_columns(ROW_COLUMNS)
        ds = ds.map_batches(sort_key, fn_kwargs={"priority": priority}, batch_format="pyarrow")
        blocks = ds.sort(list(SORT_KEY)).to_arrow_refs()
        counts = ray.get([ray.remote(num_rows).remote(b) for b in blocks])
        offsets = [sum(counts[:i]) for i in range(len(counts))]  # prefix sums over the sorted blocks
        numbered = [ray.remote(with_positions).remote(b, at) for b, at in zip(blocks, offsets, strict=True)]
        return ray.data.from_arrow_refs(numbered).repartition(target_num_rows_per_block=self.batch_rows)

    def row_local(self, ds, steps: list, first: int):
        out = ds.map_batches(segment_batch, batch_size=self.batch_rows, batch_format="pyarrow",
                             fn_kwargs={"steps": steps, "first": first, "count_tokens": self.count_tokens}
                             ).materialize()
        outcomes = sorted(out.map_batches(outcome_rows, batch_format="pyarrow", fn_kwargs={"wanted": True})
                          .select_columns([POSITION, OUTCOME]).take_all(), key=lambda r: r[POSITION])
        kept = 0
        for record in outcomes:
            outcome = outcome_of(record[OUTCOME])
            self.combined.add(outcome, first)
            kept += outcome.steps[-1]["rows_out"]
        return out.map_batches(outcome_rows, batch_format="pyarrow", fn_kwargs={"wanted": False}), kept

    def dedup(self, ds, step, first: int, count: int):
        """exact_dedup or near_dedup: candidates found by group-bys on Ray, Cleaner's step over them on the driver."""
        if step.step == "exact_dedup":
            keys = ds.map_batches(exact_keys, batch_format="pyarrow",
                                  fn_kwargs={"ignore_whitespace": step.ignore_whitespace}) if ds is not None else None
            group = ["key"]
        else:
            bands, rows = (step.bands, step.rows) if step.bands else lsh_params(step.threshold, step.num_perm)
            keys = ds.map_batches(near_keys, batch_format="pyarrow",
                                  fn_kwargs={"cfg": step, "bands": bands, "rows": rows}) if ds is not None else None
            group = ["kind", "band", "key"]
        candidates = sorted({r[POSITION] for r in keys.groupby(group).map_groups(
            shared, batch_format="pyarrow").select_columns([POSITION]).take_all()}) if keys is not None else []
        chosen = [] if not candidates else [parsed(r) for r in ds.map_batches(
            at_positions, batch_format="pyarrow", fn_kwargs={"positions": candidates}).take_all()]
        cleaner = Cleaner(sorted(chosen, key=lambda r: r[POSITION]), self.count_tokens, self.memory_gb,
                          self.spill_dir, first_step=first)
        cleaner.run(step)
        removed = sorted(set(candidates) - {r[POSITION] for r in cleaner.rows})
        cleaner.steps[0] |= {"rows_in": count, "rows_out": count - len(removed)}  # over every row, not the candidates
        self.combined.add_dedup(cleaner, first)
        if removed and ds is not None:
            ds = ds.map_batches(at_positions, batch_format="pyarrow", fn_kwargs={"positions": removed, "keep": False})
        return ds, count - len(removed)


def kept_batches(ds) -> Iterator[list[dict]]:
    """The kept rows as stored, a block at a time, in position order (blocks stay in order: preserve_order)."""
    last = -1
    for batch in [] if ds is None else ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        positions = batch[POSITION].to_pylist()
        if positions and (positions[0] <= last or positions != sorted(positions)):
            raise RuntimeError(f"clean_data on Ray: kept rows came back out of order at position {positions[0]}")
        last = positions[-1] if positions else last
        yield [stored_row(parsed(r)) for r in batch.select(ROW_COLUMNS + [POSITION]).to_pylist()]


# --- what runs on Ray's workers (plain functions of Arrow tables, pickled to the workers)

def sort_key(batch: pa.Table, priority: dict[str, int]) -> pa.Table:
    """The batch with local's sort key as columns: source priority, then row_position (file, numeric index)."""
    heads, indexes = zip(*map(row_position, batch["row_id"].to_pylist())) if batch.num_rows else ((), ())
    ranks = [priority.get(s, len(priority)) for s in batch["source"].to_pylist()]
    return (batch.append_column("_priority", pa.array(ranks, pa.int64()))
            .append_column("_head", pa.array(heads, pa.string()))
            .append_column("_index", pa.array(indexes, pa.int64())))


def num_rows(block: pa.Table) -> int:
    return block.num_rows


def with_positions(block: pa.Table, offset: int) -> pa.Table:
    """A sorted block with POSITION = offset + its place in the block, and no outcome (kept rows carry null)."""
    block = block.select(ROW_COLUMNS)
    block = block.append_column(POSITION, pa.array(range(offset, offset + block.num_rows), pa.int64()))
    return block.append_column(OUTCOME, pa.nulls(block.num_rows, pa.string())).cast(ROWS_SCHEMA)


def parsed(row: dict) -> dict:
    """A row as the steps read it (`messages` a list), its POSITION kept, no outcome column."""
    return {**{k: v for k, v in row.items() if k != OUTCOME}, "messages": json.loads(row["messages"])}


def segment_batch(batch: pa.Table, steps: list, first: int, count_tokens) -> pa.Table:
    """One batch through a segment of row-local steps: its kept rows, then one row holding its outcome."""
    rows = sorted((parsed(r) for r in batch.select(ROW_COLUMNS + [POSITION]).to_pylist()), key=lambda r: r[POSITION])
    if not rows:
        return ROWS_SCHEMA.empty_table()
    outcome = clean_batch(rows, steps, first, count_tokens)
    kept = [{**r, "messages": json.dumps(r["messages"], ensure_ascii=False)} for r in outcome.rows]
    record = {POSITION: rows[0][POSITION], OUTCOME: json.dumps({
        "quarantine": outcome.quarantine, "rewrites": outcome.rewrites,
        "pii_counts": list(outcome.pii_counts.items()), "steps": outcome.steps}, ensure_ascii=False)}
    return pa.Table.from_pylist(kept + [record], schema=ROWS_SCHEMA)


def outcome_of(text: str) -> BatchOutcome:
    """A batch's outcome as clean_batch returned it (ORDER a tuple again, pii counts in their order)."""
    data = json.loads(text)
    tupled = lambda records: [{**r, ORDER: tuple(r[ORDER])} for r in records]  # noqa: E731
    return BatchOutcome([], tupled(data["quarantine"]), tupled(data["rewrites"]), Counter(dict(data["pii_counts"])),
                        data["steps"])


def outcome_rows(batch: pa.Table, wanted: bool) -> pa.Table:
    """The batch's outcome rows (wanted) or its kept rows (not wanted)."""
    has_outcome = pc.is_valid(batch[OUTCOME])
    return batch.filter(has_outcome if wanted else pc.invert(has_outcome))


def exact_keys(batch: pa.Table, ignore_whitespace: bool) -> pa.Table:
    """Each row's exact_dedup key, as Cleaner.exact_dedup computes it."""
    key_of = whitespace_blind_hash if ignore_whitespace else current_hash
    rows = [parsed(r) for r in batch.to_pylist()]
    return pa.table({POSITION: pa.array([r[POSITION] for r in rows], pa.int64()),
                     "key": pa.array([f"{r['kind']}:{key_of(r)}" for r in rows], pa.string())})


def near_keys(batch: pa.Table, cfg, bands: int, rows: int) -> pa.Table:
    """(position, kind, band, band key) of every row near_dedup compares, one per LSH band (minhash.py's keys)."""
    compared = [(r[POSITION], r["kind"], text) for r in map(parsed, batch.to_pylist())
                if r["kind"] in NEAR_KINDS and len(text := dedup_text(r)) >= cfg.min_chars]
    if not compared:
        return pa.table({POSITION: pa.array([], pa.int64()), "kind": pa.array([], pa.string()),
                         "band": pa.array([], pa.int64()), "key": pa.array([], pa.uint64())})
    positions, kinds, texts = zip(*compared)
    sig = signatures(list(texts), cfg.num_perm, cfg.shingle_size)
    n = len(texts)
    return pa.table({POSITION: pa.array(list(positions) * bands, pa.int64()),
                     "kind": pa.array(list(kinds) * bands, pa.string()),
                     "band": pa.array([b for b in range(bands) for _ in range(n)], pa.int64()),
                     "key": pa.array(pa.concat_arrays([pa.array(band_keys(sig, b, rows)) for b in range(bands)]))})


def shared(group: pa.Table) -> pa.Table:
    """A group-by's group when more than one row shares its key (a duplicate candidate), else nothing."""
    return group if group.num_rows > 1 else group.slice(0, 0)


def at_positions(batch: pa.Table, positions: list[int], keep: bool = True) -> pa.Table:
    """The batch's rows whose POSITION is (keep) or is not (keep=False) in `positions`."""
    inside = pc.is_in(batch[POSITION], value_set=pa.array(positions, pa.int64()))
    return batch.filter(inside if keep else pc.invert(inside))
