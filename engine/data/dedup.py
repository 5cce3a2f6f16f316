"""Deduplication: exact by normalized hash, near-duplicate by MinHash LSH (engine/data/minhash.py), for millions of
rows. bench/dedup.py measures it against datasketch's MinHashLSH. Past a memory bound (data.memory_gb) both dedups
run out of core, with the same result: engine/data/dedup_spill.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from pathlib import Path

import numpy as np

from engine.data.minhash import EMPTY, agreement, band_candidates, components, lsh_params, signatures

def in_memory_bytes(count: int, num_perm: int) -> int:
    """What near_duplicate_clusters' in-memory path holds for `count` texts: the signatures, and one band's keys,
    argsort, sorted keys, run starts and the band slice widened to uint64 (the texts themselves are the caller's)."""
    return count * (4 * num_perm + 160)


def near_duplicate_clusters(texts: Iterable[str], threshold: float, num_perm: int, k: int,
                            bands_rows: tuple[int, int] | None = None, memory_gb: float | None = None,
                            spill_dir: Path | None = None) -> list[tuple[int, int, float]]:
    """(kept, removed, estimated jaccard) for every near duplicate; `kept` is the lowest index of its cluster.

    LSH uses `bands_rows` when given, else lsh_params' (candidates favour recall; the signature check keeps precision).
    Texts with no characters are never near duplicates. With `memory_gb`, texts whose in-memory footprint exceeds it
    (or any iterable without a length) go through files under `spill_dir` (engine/data/dedup_spill.py): the same list,
    in bounded memory.
    """
    bands, rows = bands_rows or lsh_params(threshold, num_perm)
    if memory_gb is not None and not (isinstance(texts, Sized)
                                      and in_memory_bytes(len(texts), num_perm) <= memory_gb * 2 ** 30):
        from engine.data.dedup_spill import spilled_near_duplicates
        return spilled_near_duplicates(texts, threshold, num_perm, k, bands, rows, memory_gb, spill_dir)
    texts = texts if isinstance(texts, list) else list(texts)
    if len(texts) < 2:
        return []
    return clusters_of_signatures(signatures(texts, num_perm, k), threshold, (bands, rows))


def clusters_of_signatures(sig: np.ndarray, threshold: float, bands_rows: tuple[int, int] | None = None
                           ) -> list[tuple[int, int, float]]:
    """near_duplicate_clusters' list from the texts' signatures (minhash.signatures, computed where the caller likes:
    a row's signature depends on its text alone). An empty text's row is EMPTY and matches nothing."""
    if len(sig) < 2:
        return []
    bands, rows = bands_rows or lsh_params(threshold, sig.shape[1])
    pairs = band_candidates(sig, bands, rows)
    pairs = pairs[(sig[pairs[:, 0], 0] != EMPTY)] if len(pairs) else pairs
    similar = pairs[agreement(sig, pairs) >= threshold] if len(pairs) else pairs
    labels = components(len(sig), similar)
    removed = np.flatnonzero(labels != np.arange(len(sig)))
    estimate = agreement(sig, np.stack([labels[removed], removed], axis=1)) if len(removed) else []
    return [(int(labels[i]), int(i), float(j)) for i, j in zip(removed, estimate, strict=True)]


EXACT_BYTES_PER_KEY = 200  # a key string of ~70 characters, its dict entry and the pair it may yield


def exact_duplicates(keys: Iterable[str], memory_gb: float | None = None,
                     spill_dir: Path | None = None) -> list[tuple[int, int]]:
    """(kept, removed) pairs: every later occurrence of a key points at its first. With `memory_gb`, keys that
    would hold more (or any iterable without a length) go through digest files under `spill_dir`."""
    if memory_gb is not None and not (isinstance(keys, Sized)
                                      and len(keys) * EXACT_BYTES_PER_KEY <= memory_gb * 2 ** 30):
        from engine.data.dedup_spill import spilled_exact_duplicates
        return spilled_exact_duplicates(keys, memory_gb, spill_dir)
    first: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs
