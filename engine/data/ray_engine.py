"""Ray Data as clean_data's engine (`data.engine: ray`): the recipe's clean steps over raw_data's shards on a Ray
cluster, writing the same tables (byte for byte) and report as the local engine (engine/data/clean_stream.py).

How each part stays what one local pass makes:
- order: rows are sorted on Ray by local's key (source priority, file, row index); a row's POSITION is its block's
  offset (prefix sums over the sorted blocks' row counts) plus its place in the block;
- row-local segments: `map_batches` calling `clean_batch`; each batch returns its kept rows and, as one more row, its
  outcome (quarantine, rewrites, pii counts, per-step counts), which the driver spools in block order, as the local
  engine spools its batches';
- exact_dedup: a group-by on the step's key; in each group of more than one row every row but the lowest position
  goes, pointing at it;
- near_dedup: a group-by on (kind, LSH band, band key) finds the rows in a shared bucket (candidates; minhash.py's
  signatures and band keys); a second group-by over the candidates' shared buckets alone (their other bands meet
  no other row), carrying their signatures, makes each bucket's star edges (its lowest position to each other
  member) and keeps those whose signatures agree at the threshold; the components of those edges are labelled by
  their lowest position (minhash.edge_components, over the edges' nodes alone); a third group-by, by component,
  measures each removed row against its component's lowest row.
Where the cluster is this machine alone, the ordered rows and each row-local segment's kept rows are Parquet files
in the work directory, one a block, named by its first position and read back a file a task in that order (tasks
kept on this machine): the object store holds a block only while it moves, so it neither fills (holding the maps
back) nor spills. On a cluster of several machines those rows are materialized in the object store instead.
The driver holds no row and no signature: (position, band) codes (8 bytes a candidate's shared bucket), positions
(8 bytes a removed row) and verified edges (16 bytes); the removed rows' records stream back into spools (Parquet
files sorted by DuckDB within data.memory_gb): clusters appended to their table by (kind, position) at each dedup's
end, quarantine and rewrites written in (step, position) order at the end, as the local engine does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.clean import (NEAR_KINDS, ORDER, POSITION, ROW_LOCAL_STEPS, BatchOutcome, Tally, clean_batch,
                               cluster_record, exact_detail, exact_key, near_detail, near_text, quarantine_record,
                               row_position, segments, stored_row)
from engine.data.clean_stream import STREAM_MEMORY_GB
from engine.data.minhash import EMPTY, band_keys, edge_components, lsh_params, signatures
from engine.data.spooled_records import Spool, SpooledRecords
from engine.errors import RecipeError
from engine.runtime.pool import usable_cores
from engine.runtime.progress import LOGGER
from engine.store.tables import CLUSTER_COLUMNS, ROW_COLUMNS, ShardWriter, parquet_batches

if TYPE_CHECKING:
    from engine.recipe import CleanSection

OUTCOME = "_outcome"  # a batch's outcome (JSON) in the one extra row it returns; null in kept rows
FILE = "_file"  # the file of a batch's kept rows, beside its outcome (null when none is kept, or no files are used)
SORT_KEY = ("_priority", "_head", "_index")
ROWS_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_COLUMNS] + [(POSITION, pa.int64()), (OUTCOME, pa.string())])
STORED_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_COLUMNS] + [(POSITION, pa.int64())])
# a removed row: its position and ids, its kind (an index into NEAR_KINDS; 0 for exact), the kept row of its cluster
REMOVAL_SCHEMA = pa.schema([(POSITION, pa.int64()), ("source", pa.string()), ("row_id", pa.string()),
                            ("kind", pa.int8()), ("kept", pa.int64()), ("kept_row_id", pa.string()),
                            ("similarity", pa.float64())])


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


def ray_clean(files: list[Path], out: Path, cfg: "CleanSection", source_order: list[str],
              count_tokens: Callable[[str], int] | None = None, memory_gb: float | None = None,
              work_dir: Path | None = None, batch_rows: int = 10_000, address: str | None = None) -> dict:
    """stream_clean on Ray over raw_data's Parquet `files`: the rows, quarantine, clusters and rewrites tables
    written as shards to `out`, the same bytes, and the same report (returned). `batch_rows` is both the rows of a
    block and of a map_batches batch (any size gives the same result); `address`: the Ray cluster, None a local one.
    The spools and the sort of the records (bounded by `memory_gb`) live in a temporary directory under `work_dir`."""
    ray = require_ray()
    started = connected(ray, address)
    options = ray.data.DataContext.get_current().execution_options
    preserved, options.preserve_order = options.preserve_order, True  # batches in position order, as local's
    try:
        with tempfile.TemporaryDirectory(prefix=".clean-ray-", dir=work_dir) as tmp:
            return RayClean(ray, Path(tmp), cfg, count_tokens, memory_gb or STREAM_MEMORY_GB,
                            batch_rows).run(files, out, source_order)
    finally:
        options.preserve_order = preserved
        if started:
            ray.shutdown()


class RayClean:
    """One clean over Ray: ordered rows with positions, then each segment of steps in turn; records spooled."""

    def __init__(self, ray, work: Path, cfg, count_tokens, memory_gb: float, batch_rows: int):
        self.ray, self.work, self.cfg, self.count_tokens, self.batch_rows = ray, work, cfg, count_tokens, batch_rows
        self.records = SpooledRecords(work, memory_gb)
        self.node = this_node(ray)  # None: a cluster of several machines, whose rows stay in the object store
        self.last_pass: Path | None = None  # the folder of the files read now

    def pass_folder(self, name: str) -> Path:
        folder = self.work / f"pass-{name}"
        folder.mkdir()
        return folder

    def pinned(self) -> dict:
        """Remote arguments keeping a task on this machine, whose disk holds the passes' files (the node label Ray
        Data's own local:// reads select)."""
        return {"label_selector": {"ray.io/node-id": self.node}}

    def from_files(self, folder: Path, files: list[str]):
        """The rows of a pass's `files` (in position order), a file a task; the pass before this one, which no one
        reads any more, removed."""
        if self.last_pass is not None:
            shutil.rmtree(self.last_pass)
        self.last_pass = folder
        if not files:  # no row left: an empty dataset, as a materialized one would be
            return self.ray.data.from_arrow(ROWS_SCHEMA.empty_table())
        return self.ray.data.read_datasource(pass_files(files), **self.pinned())

    def run(self, files: list[Path], out: Path, source_order: list[str]) -> dict:
        try:
            return self.passes(files, out, source_order)
        finally:  # on an error too: no file left open in the directory about to be removed
            self.records.close()

    def passes(self, files: list[Path], out: Path, source_order: list[str]) -> dict:
        rows_in_by_source = Counter()
        for batch in parquet_batches(files, self.batch_rows, ["source"]):  # in raw's row order, as local counts
            rows_in_by_source.update(dict(zip(*(c.to_pylist() for c in pc.value_counts(batch["source"]).flatten()))))
        count = sum(rows_in_by_source.values())
        current = self.ordered(files, source_order) if count else None
        with ShardWriter(out, "clusters", CLUSTER_COLUMNS) as self.clusters:
            for first, steps in segments(self.cfg.steps):
                LOGGER.info(f"clean_data: {', '.join(s.step for s in steps)} on Ray")
                if steps[0].step in ROW_LOCAL_STEPS:
                    current, count = self.row_local(current, steps, first) if current is not None else (None, 0)
                else:
                    current, count = self.dedup(current, steps[0], first, count)
        tally = Tally()
        with ShardWriter(out, "rows", ROW_COLUMNS) as table:
            for rows in kept_batches(current):
                tally.kept(rows)
                table.add_all(rows)
        return self.records.write(out, self.batch_rows, tally, rows_in_by_source, source_order)

    def ordered(self, files: list[Path], source_order: list[str]):
        """raw's rows sorted by local's key, each with its POSITION, in blocks of at most batch_rows rows."""
        ray = self.ray
        priority = {name: i for i, name in enumerate(source_order)}
        ds = ray.data.read_parquet([str(f) for f in files]).select_columns(ROW_COLUMNS)
        ds = ds.map_batches(sort_key, fn_kwargs={"priority": priority}, batch_format="pyarrow")
        blocks = ds.sort(list(SORT_KEY)).to_arrow_refs()
        counts = ray.get([ray.remote(num_rows).remote(b) for b in blocks])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()  # prefix sums over the sorted blocks
        if self.node is not None:
            folder = self.pass_folder("ordered")
            write = ray.remote(with_positions_written).options(**self.pinned())
            files = ray.get([write.remote(b, at, str(folder)) for b, at in zip(blocks, offsets, strict=True)])
            return self.from_files(folder, [f for f in files if f])
        numbered = [ray.remote(with_positions).remote(b, at) for b, at in zip(blocks, offsets, strict=True)]
        return ray.data.from_arrow_refs(numbered).repartition(target_num_rows_per_block=self.batch_rows).materialize()

    def row_local(self, ds, steps: list, first: int):
        """A segment of row-local steps over every row: its batches' outcomes recorded in position order; the kept
        rows (and their count)."""
        segment = {"steps": steps, "first": first, "count_tokens": self.count_tokens}
        if self.node is not None:  # each batch's kept rows to a file of the pass, its outcome back
            folder = self.pass_folder(f"segment-{first}")
            outcomes = ds.map_batches(segment_written, batch_size=self.batch_rows, batch_format="pyarrow",
                                      fn_kwargs={**segment, "folder": str(folder)}, **self.pinned())
        else:
            out = ds.map_batches(segment_batch, batch_size=self.batch_rows, batch_format="pyarrow",
                                 fn_kwargs=segment).materialize()
            outcomes = out.map_batches(outcome_rows, batch_format="pyarrow", fn_kwargs={"wanted": True})
        kept, files = 0, []
        for batch in in_order(outcomes):
            for text, file in zip(batch[OUTCOME].to_pylist(), batch[FILE].to_pylist()):  # one a batch of rows
                outcome = outcome_of(text)
                self.records.add_batch(outcome, first)
                kept += outcome.steps[-1]["rows_out"]
                files += [file] if file else []
        if self.node is not None:
            return self.from_files(folder, files), kept
        return out.map_batches(outcome_rows, batch_format="pyarrow", fn_kwargs={"wanted": False}), kept

    def dedup(self, ds, step, first: int, count: int):
        """exact_dedup or near_dedup: the removed rows found by group-bys on Ray, recorded, and filtered out."""
        reason = "exact_duplicate" if step.step == "exact_dedup" else "near_duplicate"
        removed = np.empty(0, np.int64)
        if ds is not None and count:  # a group-by needs rows: none may be left by the steps before
            # read by several passes: the kept rows of the ordered rows or of a segment, files or materialized
            found = self.exact_removals(ds, step) if step.step == "exact_dedup" else self.near_removals(ds, step)
            removed = self.recorded(found, step, first, reason) if found is not None else removed
        self.records.add_dedup(step.step, first, count, len(removed), reason)
        if len(removed):
            ds = ds.map_batches(without_positions, batch_format="pyarrow", fn_kwargs={"removed": removed})
        return ds, count - len(removed)

    @staticmethod
    def exact_removals(ds, step):
        """Every row whose key a lower position holds, pointing at that row."""
        keys = ds.map_batches(exact_key_rows, batch_format="pyarrow", fn_kwargs={"step": step})
        return keys.groupby("key").map_groups(exact_group, batch_format="pyarrow")

    def near_removals(self, ds, step):
        """Every row whose component of verified star edges has a lower position, measured against that row; None
        when no bucket is shared or no edge verifies."""
        bands, rows = (step.bands, step.rows) if step.bands else lsh_params(step.threshold, step.num_perm)
        banded = {"step": step, "bands": bands, "rows": rows}
        group = ["kind", "band", "key"]
        keys = ds.map_batches(band_rows, batch_format="pyarrow", fn_kwargs=banded).materialize()
        if not keys.count():  # no row near_dedup compares (another kind, or shorter than min_chars)
            return None
        shared = keys.groupby(group).map_groups(shared_buckets, batch_format="pyarrow", fn_kwargs={"bands": bands})
        codes = unique_column(shared, ["code"])[:, 0]  # each candidate's bands in which it shares a bucket
        if not len(codes):
            return None
        edges = ds.map_batches(band_rows, batch_format="pyarrow", fn_kwargs={**banded, "shared": codes}).groupby(
            group).map_groups(verified_star_edges, batch_format="pyarrow", fn_kwargs={"threshold": step.threshold})
        edges = unique_column(edges, ["a", "b"])
        if not len(edges):
            return None
        nodes, roots = edge_components(edges)
        members = ds.map_batches(member_rows, batch_format="pyarrow",
                                 fn_kwargs={"step": step, "nodes": nodes, "roots": roots})
        return members.groupby("root").map_groups(root_similarity, batch_format="pyarrow")

    def recorded(self, found, step, first: int, reason: str) -> np.ndarray:
        """The removed rows' quarantine (spooled) and cluster records (spooled by (kind, position), then appended to
        the table in that order, local's); their positions, sorted."""
        clusters, positions = Spool(self.work / f"clusters-{first}.parquet", CLUSTER_COLUMNS), []
        exact = reason == "exact_duplicate"
        try:
            for batch in found.iter_batches(batch_size=self.batch_rows, batch_format="pyarrow"):
                records, cluster_records = [], []
                for r in batch.to_pylist():
                    kept = {"row_id": r["kept_row_id"]}
                    records.append(quarantine_record(r, step.step, first, reason,
                                                     exact_detail(kept) if exact else near_detail(kept, r["similarity"])))
                    cluster_records.append({**cluster_record("exact" if exact else "near", kept, r, r["similarity"]),
                                            ORDER: (r["kind"], r[POSITION])})
                self.records.quarantine.add(records)
                clusters.add(cluster_records)
                positions.append(batch[POSITION].to_numpy())
            for batch in clusters.sorted_batches(self.records.con, self.batch_rows):
                self.clusters.add_all(batch.to_pylist())
        finally:
            clusters.close()
            clusters.path.unlink(missing_ok=True)
        return np.sort(np.concatenate(positions)) if positions else np.empty(0, np.int64)


def this_node(ray) -> str | None:
    """This machine's node id when Ray's cluster is this machine alone and this process its driver (not a Ray
    client): its workers then read and write the work directory; else None."""
    from ray.util.client import ray as client
    if client.is_connected():
        return None
    alive = [node for node in ray.nodes() if node["Alive"]]
    node = ray.get_runtime_context().get_node_id()
    return node if len(alive) == 1 and alive[0]["NodeID"] == node else None


def in_order(ds) -> Iterator[pa.Table]:
    """A dataset's blocks in POSITION order (they stay in order: preserve_order), checked."""
    last = -1
    for batch in [] if ds is None else ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        positions = batch[POSITION].to_numpy()
        if len(positions) and (positions[0] <= last or (np.diff(positions) <= 0).any()):
            raise RuntimeError(f"clean_data on Ray: rows came back out of order at position {positions[0]}")
        last = int(positions[-1]) if len(positions) else last
        yield batch


def kept_batches(ds) -> Iterator[list[dict]]:
    """The kept rows as stored (made so on Ray), a block at a time, in position order."""
    stored = None if ds is None else ds.map_batches(stored_batch, batch_format="pyarrow")
    for batch in in_order(stored):
        yield batch.select(ROW_COLUMNS).to_pylist()


def unique_column(ds, columns: list[str]) -> np.ndarray:
    """The distinct rows of a dataset's int64 `columns`, as an (n, len(columns)) array sorted by row."""
    parts = [np.unique(np.stack([b[c].to_numpy() for c in columns], axis=1), axis=0)
             for b in ds.select_columns(columns).iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    return np.unique(np.concatenate(parts), axis=0) if parts else np.empty((0, len(columns)), np.int64)


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


def with_positions_written(block: pa.Table, offset: int, folder: str) -> str | None:
    """A sorted block with its positions (with_positions) written to a file of the pass `folder`; its path (None
    for an empty block: no file)."""
    return written(with_positions(block, offset), folder) if block.num_rows else None


def written(table: pa.Table, folder: str) -> str:
    """Rows (in position order) to a file named by their first position, whole or not at all (a retried task
    writes the same bytes again); its path."""
    path = os.path.join(folder, f"{table[POSITION][0].as_py():015d}.parquet")
    pq.write_table(table, path + ".partial")
    os.replace(path + ".partial", path)
    return path


def pass_files(files: list[str]):
    """A pass's files as a Ray Data datasource: a read task a file, in their order (read_parquet packs files into
    read tasks out of order)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PassFiles(Datasource):
        def estimate_inmemory_data_size(self) -> None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            return [ReadTask(partial(read_file, path), BlockMetadata(num_rows=None, size_bytes=None,
                                                                     input_files=[path], exec_stats=None))
                    for path in files]

    return PassFiles()


def read_file(path: str) -> list[pa.Table]:
    return [pq.read_table(path, schema=ROWS_SCHEMA)]


def segment_written(batch: pa.Table, folder: str, **segment) -> pa.Table:
    """segment_batch, its kept rows written to a file of the pass `folder`: the batch's outcome row, with the
    path of that file (null when no row is kept)."""
    rows = segment_batch(batch, **segment)
    kept, outcome = outcome_rows(rows, wanted=False), outcome_rows(rows, wanted=True)
    path = written(kept, folder) if kept.num_rows else None
    return outcome.select([POSITION, OUTCOME]).append_column(FILE, pa.array([path] * outcome.num_rows, pa.string()))


def parsed(row: dict) -> dict:
    """A row as the steps read it (`messages` a list), its POSITION kept, no outcome column."""
    return {**{k: v for k, v in row.items() if k != OUTCOME}, "messages": json.loads(row["messages"])}


def parsed_rows_of(batch: pa.Table) -> list[dict]:
    return [parsed(r) for r in batch.select(ROW_COLUMNS + [POSITION]).to_pylist()]


def segment_batch(batch: pa.Table, steps: list, first: int, count_tokens) -> pa.Table:
    """One batch through a segment of row-local steps: its kept rows, then one row holding its outcome."""
    rows = sorted(parsed_rows_of(batch), key=lambda r: r[POSITION])
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
    """The batch's outcome rows (wanted: their position and outcome, no file) or its kept rows (not wanted)."""
    has_outcome = pc.is_valid(batch[OUTCOME])
    if not wanted:
        return batch.filter(pc.invert(has_outcome))
    outcomes = batch.filter(has_outcome).select([POSITION, OUTCOME])
    return outcomes.append_column(FILE, pa.nulls(outcomes.num_rows, pa.string()))


def stored_batch(batch: pa.Table) -> pa.Table:
    """Kept rows as the table stores them (stored_row: content_hash recomputed), positions kept."""
    return pa.Table.from_pylist([{**stored_row(r), POSITION: r[POSITION]} for r in parsed_rows_of(batch)],
                                schema=STORED_SCHEMA)


def without_positions(batch: pa.Table, removed: np.ndarray) -> pa.Table:
    """The batch's rows but those whose POSITION is in `removed` (sorted)."""
    return batch.filter(pa.array(~in_sorted(batch[POSITION].to_numpy(), removed)))


NO_REMOVALS = REMOVAL_SCHEMA.empty_table()


def pointing_at_lowest(group: pa.Table, kind, similarity) -> pa.Table:
    """The rows of `group` (sorted by POSITION) but its first, each removed pointing at the first, with their `kind`
    and `similarity` (arrays over those rows)."""
    first, rest = group.slice(0, 1).to_pylist()[0], group.slice(1)
    n = rest.num_rows
    return pa.table({POSITION: rest[POSITION], "source": rest["source"], "row_id": rest["row_id"], "kind": kind,
                     "kept": np.full(n, first[POSITION], np.int64), "kept_row_id": [first["row_id"]] * n,
                     "similarity": similarity}).cast(REMOVAL_SCHEMA)


def exact_key_rows(batch: pa.Table, step) -> pa.Table:
    """Each row's exact_dedup key (clean.exact_key), with its position and ids."""
    rows = parsed_rows_of(batch)
    return pa.table({POSITION: pa.array([r[POSITION] for r in rows], pa.int64()),
                     "source": pa.array([r["source"] for r in rows], pa.string()),
                     "row_id": pa.array([r["row_id"] for r in rows], pa.string()),
                     "key": pa.array([exact_key(r, step) for r in rows], pa.string())})


def exact_group(group: pa.Table) -> pa.Table:
    """One key's rows: every one but the lowest position is removed, pointing at it."""
    if group.num_rows < 2:  # most keys: nothing to build
        return NO_REMOVALS
    n = group.num_rows - 1
    return pointing_at_lowest(group.sort_by(POSITION), np.zeros(n, np.int8), np.ones(n))


def compared(batch: pa.Table, step, among: np.ndarray | None = None) -> tuple[list[dict], np.ndarray]:
    """The batch's rows near_dedup compares (clean.near_text: a kind it compares, min_chars), only those whose
    POSITION is in `among` (sorted) when given, with their signatures (minhash.signatures)."""
    if among is not None:
        batch = batch.filter(pa.array(in_sorted(batch[POSITION].to_numpy(), among)))
    rows = [(r, text) for r in parsed_rows_of(batch)
            if r["kind"] in NEAR_KINDS and (text := near_text(r, r["kind"], step)) is not None]
    sig = signatures([text for _, text in rows], step.num_perm, step.shingle_size)
    return [r for r, _ in rows], sig


def band_rows(batch: pa.Table, step, bands: int, rows: int, shared: np.ndarray | None = None) -> pa.Table:
    """(position, kind, band, band key) of every compared row, one per LSH band (minhash.py's keys). With `shared`
    (the bucket_codes of each shared bucket's members, sorted): only the bands in which a row shares a bucket, each
    carrying the row's signature (in another band it would meet no other row)."""
    if shared is not None:
        batch = batch.filter(pa.array(sharing(batch[POSITION].to_numpy(), shared, bands)))
    kept, sig = compared(batch, step)
    n = len(kept)
    positions = np.tile(np.array([r[POSITION] for r in kept], np.int64), bands)
    band = np.repeat(np.arange(bands, dtype=np.int64), n)
    table = pa.table({POSITION: positions, "kind": pa.array([r["kind"] for r in kept] * bands, pa.string()),
                      "band": band, "key": np.concatenate([band_keys(sig, b, rows) for b in range(bands)])
                      if n else np.empty(0, np.uint64)})
    if shared is None:
        return table
    wanted = np.flatnonzero(in_sorted(bucket_codes(positions, band, bands), shared))
    return table.take(wanted).append_column("signature", signature_array(sig[wanted % max(n, 1)]))


def sharing(positions: np.ndarray, shared: np.ndarray, bands: int) -> np.ndarray:
    """Whether each row shares a bucket in some band: a code of `shared` (sorted bucket_codes) in its range
    [position * bands, (position + 1) * bands), a binary search each (no array derived from the codes per batch)."""
    if not len(shared):
        return np.zeros(len(positions), bool)
    at = np.searchsorted(shared, bucket_codes(positions, 0, bands))
    return (at < len(shared)) & (shared[np.minimum(at, len(shared) - 1)] < bucket_codes(positions + 1, 0, bands))


def in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Whether each of `values` is in `sorted_values` (a binary search each: the sorted array is not sorted again
    per batch, as np.isin would)."""
    if not len(sorted_values):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_values, values)
    return (at < len(sorted_values)) & (sorted_values[np.minimum(at, len(sorted_values) - 1)] == values)


def bucket_codes(positions: np.ndarray, band: np.ndarray, bands: int) -> np.ndarray:
    """A (row, band) pair as one int64 (8 bytes on the driver), ordered as the pairs are."""
    return positions * bands + band


def shared_buckets(group: pa.Table, bands: int) -> pa.Table:
    """A bucket's members' bucket_codes when more than one row shares it, else none."""
    shared = group.slice(0, group.num_rows if group.num_rows > 1 else 0)
    return pa.table({"code": pa.array(bucket_codes(shared[POSITION].to_numpy(), shared["band"].to_numpy(), bands),
                                      pa.int64())})


def signature_array(sig: np.ndarray) -> pa.Array:
    """Signatures (one row each) as an Arrow binary column; signature_matrix reads it back."""
    return pa.array([row.tobytes() for row in sig], pa.binary())


def signature_matrix(column) -> np.ndarray:
    values = column.to_pylist()
    return np.frombuffer(b"".join(values), np.uint32).reshape(len(values), -1)


def verified_star_edges(group: pa.Table, threshold: float) -> pa.Table:
    """A shared bucket's star edges (its lowest position, another member) whose signatures agree at `threshold`
    (minhash.agreement); none from a bucket of empty texts (their signatures match nothing), as local's check."""
    group = group.sort_by(POSITION)  # of two rows or more: shared buckets alone come here
    sig = signature_matrix(group["signature"])
    positions = group[POSITION].to_numpy()
    similar = (sig[1:] == sig[0]).mean(axis=1) >= threshold if sig[0, 0] != EMPTY else np.zeros(len(sig) - 1, bool)
    return pa.table({"a": np.full(int(similar.sum()), positions[0], np.int64), "b": positions[1:][similar]})


def member_rows(batch: pa.Table, step, nodes: np.ndarray, roots: np.ndarray) -> pa.Table:
    """The batch's rows in a component (`nodes` sorted, `roots` their lowest positions), each with its root, ids,
    kind and signature."""
    kept, sig = compared(batch, step, nodes)
    positions = np.array([r[POSITION] for r in kept], np.int64)
    return pa.table({"root": roots[np.searchsorted(nodes, positions)].astype(np.int64), POSITION: positions,
                     "source": pa.array([r["source"] for r in kept], pa.string()),
                     "row_id": pa.array([r["row_id"] for r in kept], pa.string()),
                     "kind": pa.array([NEAR_KINDS.index(r["kind"]) for r in kept], pa.int8()),
                     "signature": signature_array(sig)})


def root_similarity(group: pa.Table) -> pa.Table:
    """One component: every member but its root removed, with its agreement with the root's signature (as local's
    estimate against the component's lowest row)."""
    group = group.sort_by(POSITION)
    sig = signature_matrix(group["signature"])
    return pointing_at_lowest(group, group["kind"].slice(1), (sig[1:] == sig[0]).mean(axis=1))
