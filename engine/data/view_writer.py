"""A DatasetDict written as its rows stream in, in the layout `DatasetDict.save_to_disk` writes (dataset_dict.json;
per split data-XXXXX-of-XXXXX.arrow, dataset_info.json, state.json), which `datasets.load_from_disk` reads.

save_to_disk needs the whole dataset (in memory or memory-mapped) to size its shards; here each split's rows go to
datasets' ArrowWriter in chunks of CHUNK_ROWS rows (one record batch each, fixed by row count, never by how the rows
arrived), a new shard starting at the first chunk boundary past SHARD_BYTES, so the files are the same bytes for any
batching of the same rows. The fingerprint in state.json is a hash of the split's files. Written by hand because
datasets has no streamed save_to_disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
from datasets import DatasetInfo, Features
from datasets.arrow_writer import ArrowWriter
from datasets.utils.py_utils import asdict  # save_to_disk's: leaves out the fields that are None

CHUNK_ROWS = 1000  # save_to_disk's writer batch (datasets.config.DEFAULT_MAX_BATCH_SIZE)
SHARD_BYTES = 500 * 10 ** 6  # save_to_disk's default max_shard_size ("500MB")


class SplitWriter:
    """One split of a dataset: its rows appended as Arrow tables, written CHUNK_ROWS at a time."""

    def __init__(self, folder: Path, features: Features, shard_bytes: int = SHARD_BYTES):
        self.folder, self.features, self.shard_bytes = folder, features, shard_bytes
        self.pending: list[pa.Table] = []
        self.empty = features.arrow_schema.empty_table()
        self.pending_rows, self.rows, self.shards = 0, 0, []
        self.writer: ArrowWriter | None = None
        self.in_shard = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
        while self.pending_rows >= CHUNK_ROWS:
            self._chunk(CHUNK_ROWS)

    def _chunk(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        head, rest = table.slice(0, n), table.slice(n)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self.writer is None or self.in_shard >= self.shard_bytes:
            self._next_shard()
        # copied into fresh buffers (concatenated with an empty chunk): the writer writes a buffer as the array holds
        # it, and a slice of a bigger array holds more than its rows, which would make the bytes depend on batching
        fresh = pa.concat_tables([head, self.empty]).combine_chunks()
        self.writer.write_table(fresh)
        self.in_shard += fresh.nbytes  # the copy's size: a slice's nbytes depends on how its rows arrived
        self.rows += n

    def _next_shard(self) -> None:
        self._close_shard()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"data-{len(self.shards):05d}.arrow.partial"
        self.shards.append(path)
        self.writer, self.in_shard = ArrowWriter(features=self.features, path=str(path), embed_local_files=True), 0

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        """The last rows written, the shards named as save_to_disk names them, dataset_info.json and state.json."""
        if self.pending_rows:
            self._chunk(self.pending_rows)
        self._close_shard()
        if not self.shards:
            return
        names = [f"data-{i:05d}-of-{len(self.shards):05d}.arrow" for i in range(len(self.shards))]
        digest = hashlib.sha256()
        for path, name in zip(self.shards, names, strict=True):
            path.rename(self.folder / name)
            with (self.folder / name).open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": digest.hexdigest()[:16],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(DatasetInfo(features=self.features))
        (self.folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))


class DictWriter:
    """A DatasetDict of `splits`, each a SplitWriter under folder/<split>."""

    def __init__(self, folder: Path, features: Features, splits: tuple[str, ...] = ("train", "eval")):
        self.folder = folder
        self.splits = {split: SplitWriter(folder / split, features) for split in splits}

    def write(self, split: str, table: pa.Table) -> None:
        self.splits[split].write(table)

    def rows(self, split: str) -> int:
        return self.splits[split].rows + self.splits[split].pending_rows

    def close(self) -> None:
        for writer in self.splits.values():
            writer.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "dataset_dict.json").write_text(json.dumps({"splits": list(self.splits)}))
