"""Deduplication: exact by normalized hash, near-duplicate by MinHash LSH (vectorised with numpy)."""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np

MERSENNE = np.uint64((1 << 61) - 1)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a nonlinear scramble, so the (linear) MinHash permutations act as random ones."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """32-bit hashes of the text's character k-grams (the whole text if shorter than k)."""
    data = text.encode("utf-8")
    if len(data) <= k:
        return np.array([zlib.crc32(data)], dtype=np.uint64)
    grams = np.lib.stride_tricks.sliding_window_view(np.frombuffer(data, dtype=np.uint8), k)
    # polynomial hash of each k-gram in one pass over the window axis
    weights = np.uint64(16777619) ** np.arange(k, dtype=np.uint64)
    return np.unique(mix64((grams.astype(np.uint64) * weights).sum(axis=1)) & np.uint64(0xFFFFFFFF))


def minhash_signatures(texts: list[str], num_perm: int, k: int, seed: int = 1) -> np.ndarray:
    """(n, num_perm) MinHash signatures: the permutations (a*h + b) mod (2^61 - 1), truncated to 32 bits."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE, size=num_perm, dtype=np.uint64)
    signatures = np.empty((len(texts), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):  # the product wraps modulo 2^64, exactly as datasketch's does
        for i, text in enumerate(texts):
            hashes = shingle_hashes(text, k)
            signatures[i] = (((np.outer(hashes, a) + b) % MERSENNE) & np.uint64(0xFFFFFFFF)).min(axis=0)
    return signatures


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows minimising false positives + false negatives around the threshold (as datasketch)."""
    xs = np.linspace(0, 1, 201)
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1 - (1 - xs ** rows) ** bands
        err = np.trapezoid(np.where(xs < threshold, p, 0), xs) + np.trapezoid(np.where(xs >= threshold, 1 - p, 0), xs)
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


def near_duplicate_clusters(texts: list[str], threshold: float, num_perm: int, k: int,
                            bands_rows: tuple[int, int] | None = None) -> list[tuple[int, int, float]]:
    """(kept, removed, estimated jaccard) for every near duplicate; `kept` is the lowest index of its cluster.

    LSH uses `bands_rows` when given, else the bands and rows that best separate pairs around `threshold`.
    """
    if len(texts) < 2:
        return []
    sig = minhash_signatures(texts, num_perm, k)
    bands, rows = bands_rows or lsh_params(threshold, num_perm)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        _, bucket = np.unique(sig[:, band * rows:(band + 1) * rows], axis=0, return_inverse=True)
        members = defaultdict(list)
        for index in np.flatnonzero(np.bincount(bucket)[bucket] > 1):
            members[bucket[index]].append(index)
        for group in members.values():
            for i in group[1:]:
                if (sig[group[0]] == sig[i]).mean() >= threshold:
                    ri, rj = root(group[0]), root(i)
                    parent[max(ri, rj)] = min(ri, rj)
    result = []
    for i in range(len(texts)):
        r = root(i)
        if r != i:
            result.append((r, i, float((sig[r] == sig[i]).mean())))
    return result


def exact_duplicates(keys: list[str]) -> list[tuple[int, int]]:
    """(kept, removed) pairs: every later occurrence of a key points at its first."""
    first: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs
