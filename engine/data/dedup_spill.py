"""Exact and near dedup with bounded memory: the same (kept, removed[, jaccard]) lists as engine/data/dedup.py's
in-memory path, computed from files spilled to disk and read back one partition at a time.

Near: texts stream in, in chunks of bounded characters, to a signature file (n x num_perm uint32); then each band's
(key, index) records go to partition files by band and key hash; each partition alone gives its buckets' candidate
pairs (a bucket never spans two partitions, and records sit in index order, so a bucket's first member is its lowest
index, as in memory), which are checked against signatures read back from the file and kept as edges. Components
take the minimum label over the edges in memory, over the documents in an edge alone (minhash.edge_components):
16 bytes an edge and ~24 a document in one, none for the others; edges are verified near duplicates.
Exact: (128-bit BLAKE2b digest of the key, index) records partitioned by digest; the lowest index of each digest is
kept (two distinct keys share a digest with probability ~n^2 / 2^129).

Each phase (signature chunks, band records, one partition, verification chunks, exact batches) holds about a quarter
of `memory_gb` at most, beside the edges; the files live in a temporary directory under `spill_dir`, removed on
every exit path. Written here because no library does it: datasketch's LSH storage is per key (dict, Redis,
Cassandra), and an out-of-core sort of (key, index) records is a few numpy calls per partition.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from engine.data.constants import MAX_SHINGLE
from engine.data.minhash import EMPTY, band_keys, bucket_pairs, chunk_signatures, densify, edge_components

RECORD = np.dtype([("key", "<u8"), ("index", "<i8")])  # one document's key in one band
DIGEST = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("index", "<i8")])  # one exact-dedup key's 128-bit digest
PARTITION_BYTES_PER_RECORD = 96  # a partition's records, argsort, sorted keys, run starts and the pairs it yields
SIGNATURE_BYTES_PER_CHAR = 96  # chunk_signatures' arrays per UTF-8 byte (packed word, position, bin, slot, ...)
KEY_OVERHEAD = 100  # a key string's object header, its list slot and its digest
MAX_PARTITIONS = 4096


def budget_bytes(memory_gb: float) -> int:
    return max(int(memory_gb * 2 ** 30), 1)


def partitions_for(records: int, memory_gb: float, share: float = 0.5) -> int:
    """How many partitions keep each one's working set within `share` of the budget."""
    need = records * PARTITION_BYTES_PER_RECORD / (budget_bytes(memory_gb) * share)
    return int(min(max(math.ceil(need), 1), MAX_PARTITIONS))


def text_chunks(texts: Iterable[str], memory_gb: float) -> Iterator[list[bytes]]:
    """UTF-8 documents in chunks whose signature arrays fit a quarter of the budget (one document at least)."""
    limit = max(budget_bytes(memory_gb) // 4 // SIGNATURE_BYTES_PER_CHAR, 1)
    chunk, size = [], 0
    for text in texts:
        encoded = text.encode("utf-8")
        if chunk and (size + len(encoded) > limit or len(chunk) >= 8192):
            yield chunk
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded)
    if chunk:
        yield chunk


def append_partitioned(records: np.ndarray, part: np.ndarray, count: int, path_of) -> None:
    """Append each record to its partition's file, keeping the records' order inside each partition."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(count + 1))
    for p in range(count):
        if bounds[p + 1] > bounds[p]:
            with open(path_of(p), "ab") as f:
                records[order[bounds[p]:bounds[p + 1]]].tofile(f)


class Signatures:
    """The signature file, its rows read back by index with pread: a map of it would count, in resident memory,
    every page it faults in and its neighbours (the kernel maps pages around a fault), up to the whole file."""

    def __init__(self, path: Path, num_perm: int):
        self.path, self.num_perm = path, num_perm
        self.count = path.stat().st_size // (4 * num_perm) if path.exists() else 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=np.uint32, count=(stop - start) * self.num_perm,
                           offset=start * self.num_perm * 4).reshape(-1, self.num_perm)

    def rows_at(self, index: np.ndarray, fd: int) -> np.ndarray:
        unique, inverse = np.unique(index, return_inverse=True)
        size = 4 * self.num_perm
        raw = b"".join([os.pread(fd, size, i * size) for i in unique.tolist()])
        return np.frombuffer(raw, dtype=np.uint32).reshape(-1, self.num_perm)[inverse]

    def agreement(self, pairs: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """dedup.agreement over the file (the fraction of equal bins of each pair), and whether the pair's first
        text has any shingle (an empty one matches nothing: the in-memory path's filter)."""
        out, filled = np.empty(len(pairs)), np.empty(len(pairs), dtype=bool)
        with open(self.path, "rb") as f:
            for start in range(0, len(pairs), chunk):
                part = pairs[start:start + chunk]
                first, second = self.rows_at(part[:, 0], f.fileno()), self.rows_at(part[:, 1], f.fileno())
                out[start:start + chunk] = (first == second).mean(axis=1)
                filled[start:start + chunk] = first[:, 0] != EMPTY
        return out, filled


def write_signatures(texts: Iterable[str], num_perm: int, k: int, memory_gb: float, path: Path) -> Signatures:
    if not 1 <= k <= MAX_SHINGLE:
        raise ValueError(f"shingle size {k}: expected 1 to {MAX_SHINGLE} characters")
    with open(path, "wb") as f:
        for encoded in text_chunks(texts, memory_gb):
            densify(chunk_signatures(encoded, num_perm, k)).tofile(f)
    return Signatures(path, num_perm)


def pairs_per_chunk(memory_gb: float, num_perm: int) -> int:
    """Pairs checked at once: two signature rows each, read as bytes, then as an array, then compared."""
    return max(min(budget_bytes(memory_gb) // 4 // (2 * 4 * num_perm * 4), 65536), 1)


def spilled_near_duplicates(texts: Iterable[str], threshold: float, num_perm: int, k: int, bands: int, rows: int,
                            memory_gb: float, spill_dir: Path | None) -> list[tuple[int, int, float]]:
    """dedup.near_duplicate_clusters' list, from files under a temporary directory in `spill_dir`."""
    kept, removed, estimate = spilled_near_arrays(texts, threshold, num_perm, k, bands, rows, memory_gb, spill_dir)
    return [(int(a), int(b), float(j)) for a, b, j in zip(kept, removed, estimate, strict=True)]


def spilled_near_arrays(texts: Iterable[str], threshold: float, num_perm: int, k: int, bands: int, rows: int,
                        memory_gb: float, spill_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """spilled_near_duplicates' answer as arrays (kept, removed in ascending order, estimated jaccard): 20 bytes a
    near duplicate, where its list of tuples takes ~130."""
    with tempfile.TemporaryDirectory(prefix=".dedup-spill-", dir=spill_dir) as tmp:
        work = Path(tmp)
        sig = write_signatures(texts, num_perm, k, memory_gb, work / "signatures.u32")
        n = sig.count
        if n < 2:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
        per_band = partitions_for(n, memory_gb)
        path_of = lambda band: lambda p: work / f"band{band}-{p}.rec"  # noqa: E731
        rows_per_read = max(min(budget_bytes(memory_gb) // 4 // (4 * num_perm + 16 * rows + 64), n), 1)
        for start in range(0, n, rows_per_read):
            block = sig.rows(start, min(start + rows_per_read, n))
            records = np.empty(len(block), dtype=RECORD)
            records["index"] = np.arange(start, start + len(block))
            for band in range(bands):
                records["key"] = band_keys(block, band, rows)
                append_partitioned(records, (records["key"] >> np.uint64(32)) % np.uint64(per_band), per_band,
                                   path_of(band))
        chunk = pairs_per_chunk(memory_gb, num_perm)
        edges = np.empty((0, 2), dtype=np.int64)
        for band in range(bands):
            found = [edges]
            for p in range(per_band):
                if not path_of(band)(p).exists():
                    continue
                records = np.fromfile(path_of(band)(p), dtype=RECORD)
                pairs = bucket_pairs(records["key"], records["index"])
                del records
                if len(pairs):
                    estimate, filled = sig.agreement(pairs, chunk)
                    found.append(pairs[filled & (estimate >= threshold)])
            # unique after each band: a near copy shares most bands with its text, so the edges held stay the distinct
            # ones instead of up to `bands` copies of each
            edges = np.unique(np.concatenate(found), axis=0)
            del found
        nodes, roots = edge_components(edges)
        del edges
        moved = roots != nodes
        kept, removed = roots[moved].astype(np.int64), nodes[moved].astype(np.int64)
        estimate = (sig.agreement(np.stack([kept, removed], axis=1), chunk)[0] if len(removed)
                    else np.empty(0, np.float64))
        return kept, removed, estimate


def key_digests(keys: list[str]) -> np.ndarray:
    """(hi, lo) of each key's 128-bit BLAKE2b digest (two keys share one with probability ~n^2 / 2^129)."""
    raw = b"".join(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest() for key in keys)
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2)


def spilled_exact_duplicates(keys: Iterable[str], memory_gb: float, spill_dir: Path | None) -> list[tuple[int, int]]:
    """dedup.exact_duplicates' list, from digest records partitioned by digest under `spill_dir`."""
    return [(int(a), int(b)) for a, b in spilled_exact_pairs(keys, memory_gb, spill_dir)]


def spilled_exact_pairs(keys: Iterable[str], memory_gb: float, spill_dir: Path | None) -> np.ndarray:
    """spilled_exact_duplicates' answer as an (n, 2) array of (kept, removed), removed ascending: 16 bytes a
    duplicate, where its list of tuples takes ~130."""
    with tempfile.TemporaryDirectory(prefix=".dedup-spill-", dir=spill_dir) as tmp:
        work = Path(tmp)
        limit = budget_bytes(memory_gb) // 4
        per_read = max(limit // (DIGEST.itemsize * 4), 1)  # records, and the sort of their partitions
        n, batch, size = 0, [], 0
        with open(work / "digests.rec", "wb") as f:
            for key in keys:
                batch.append(key)
                size += len(key) + KEY_OVERHEAD
                if size >= limit:
                    n, batch, size = spill_digests(batch, n, f), [], 0
            n = spill_digests(batch, n, f)
        count = partitions_for(n, memory_gb)
        path_of = lambda p: work / f"digests-{p}.rec"  # noqa: E731
        for start in range(0, n, per_read):
            records = np.fromfile(work / "digests.rec", dtype=DIGEST, count=min(per_read, n - start),
                                  offset=start * DIGEST.itemsize)
            append_partitioned(records, records["lo"] % np.uint64(count), count, path_of)
        (work / "digests.rec").unlink()
        pairs = []
        for p in range(count):
            if path_of(p).exists():
                records = np.fromfile(path_of(p), dtype=DIGEST)
                order = np.lexsort((records["hi"], records["lo"]))  # stable: index order inside each digest
                hi, lo, index = records["hi"][order], records["lo"][order], records["index"][order]
                starts = np.r_[True, (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])]
                first = index[np.flatnonzero(starts)][np.cumsum(starts) - 1]
                pairs.append(np.stack([first[~starts], index[~starts]], axis=1))
        pairs = np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)
        return pairs[np.argsort(pairs[:, 1])]


def spill_digests(batch: list[str], n: int, f) -> int:
    records = np.empty(len(batch), dtype=DIGEST)
    if batch:
        digests = key_digests(batch)
        records["hi"], records["lo"] = digests[:, 0], digests[:, 1]
        records["index"] = np.arange(n, n + len(batch))
        records.tofile(f)
    return n + len(batch)
