"""MinHash for near-duplicate search, vectorised for millions of rows: the signatures, LSH banding, the candidate
check and the clustering that engine/data/dedup.py (in memory) and engine/data/dedup_spill.py (out of core) share.

Signatures are one-permutation MinHash (OPH, Li et al. 2012) with rotation densification
(Shrivastava & Li 2014): each character k-gram is hashed once and lands in one of `num_perm` bins,
whose minimum is kept. That is one hash per shingle instead of `num_perm`, computed with numpy over
whole chunks of documents; LSH banding, candidate checks and clustering are numpy too. The bands are chosen
for recall (a pair 0.05 above the threshold is almost surely a candidate) since every candidate is then checked
against its signature estimate.
"""

from __future__ import annotations

import numpy as np

from engine.data.constants import MAX_SHINGLE

EMPTY = np.uint32(0xFFFFFFFF)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place: a nonlinear scramble of packed shingles into uniform 64-bit hashes."""
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        for shift, mult in ((30, MIX1), (27, MIX2)):
            np.right_shift(x, np.uint64(shift), out=t)
            np.bitwise_xor(x, t, out=x)
            np.multiply(x, mult, out=x)
        np.right_shift(x, np.uint64(31), out=t)
        np.bitwise_xor(x, t, out=x)
    return x


def chunk_signatures(encoded: list[bytes], num_perm: int, k: int) -> np.ndarray:
    """(len(encoded), num_perm) uint32 OPH signatures of one chunk of UTF-8 documents (before densification)."""
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b"".join(encoded) + b"\0" * MAX_SHINGLE, dtype=np.uint8)
    n = int(lengths.sum())
    sig = np.full(len(encoded) * num_perm + 1, EMPTY)  # the last slot takes shingles that cross a document end
    if n == 0:
        return sig[:-1].reshape(len(encoded), num_perm)
    x = np.ndarray(shape=(n,), dtype="<u8", buffer=buf, strides=(1,)).copy()  # byte i..i+7 as one word
    np.bitwise_and(x, np.uint64((1 << 8 * k) - 1), out=x)  # k bytes a shingle
    ends = np.cumsum(lengths)
    width = np.minimum(lengths, k)  # a document shorter than k is one shingle: itself
    short = np.flatnonzero((lengths > 0) & (lengths < k))
    x[(ends - lengths)[short]] &= (np.uint64(1) << (np.uint64(8) * width[short].astype(np.uint64))) - np.uint64(1)
    mix64(x)
    bins = ((x >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)  # Lemire's range reduction
    slot = bins.view(np.int64)
    slot += np.repeat(np.arange(len(encoded), dtype=np.int64) * num_perm, lengths)
    back = np.arange(1, k, dtype=np.int64)  # a document's last width - 1 positions start no whole shingle
    slot[(ends[:, None] - back)[back < width[:, None]]] = len(encoded) * num_perm
    np.minimum.at(sig, slot, x.astype(np.uint32))
    return sig[:-1].reshape(len(encoded), num_perm)


def densify(sig: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the next non-empty one to its right (circularly), offset by the distance."""
    empty = sig == EMPTY
    rows = np.flatnonzero(empty.any(axis=1) & ~empty.all(axis=1))
    if len(rows) == 0:
        return sig
    part, k = sig[rows], sig.shape[1]
    doubled = np.concatenate([part, part], axis=1)
    index = np.where(np.concatenate([~empty[rows]] * 2, axis=1), np.arange(2 * k, dtype=np.int16), 2 * k)
    nearest = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1][:, :k]  # next non-empty bin at or after j
    filled = np.take_along_axis(doubled, nearest, axis=1)
    distance = (nearest - np.arange(k)).astype(np.uint32)
    with np.errstate(over="ignore"):
        sig[rows] = np.where(empty[rows], filled + distance * np.uint32(0x9E3779B9), part)
    return sig


def signatures(texts: list[str], num_perm: int, k: int, chunk: int = 8192) -> np.ndarray:
    """(len(texts), num_perm) uint32 signatures; equal bins estimate the Jaccard similarity of k-gram sets."""
    if not 1 <= k <= MAX_SHINGLE:
        raise ValueError(f"shingle size {k}: expected 1 to {MAX_SHINGLE} characters")
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for start in range(0, len(texts), chunk):
        encoded = [t.encode("utf-8") for t in texts[start:start + chunk]]
        out[start:start + len(encoded)] = densify(chunk_signatures(encoded, num_perm, k))
    return out


RECALL_MARGIN, RECALL_AT_MARGIN = 0.05, 0.995  # a pair at threshold + margin becomes a candidate this often


def lsh_params(threshold: float, num_perm: int, margin: float = RECALL_MARGIN,
               recall: float = RECALL_AT_MARGIN) -> tuple[int, int]:
    """Bands and rows under which a pair `margin` above the threshold is a candidate with probability >= `recall`,
    with the least false-positive area below the threshold among those.

    Recall is a constraint, not a term traded against false positives as in datasketch's FP + FN minimum (whose
    9 bands of 14 rows at 0.8 and 128 permutations make a pair at Jaccard 0.85 a candidate 62% of the time; 14 bands
    of 7 here, 99.5%): every candidate is verified against its signature estimate, so a false positive costs one
    comparison of two signatures while a false negative is a duplicate kept for good. The verification cost stays
    bounded: band_candidates yields at most one pair per row per band. Near 1 the margin shrinks to half the
    distance to 1; when num_perm is too small for the constraint, the most recall num_perm allows (one row per band).
    """
    target = min(threshold + margin, (1 + threshold) / 2)
    rows = np.arange(1, num_perm + 1)
    hit = target ** rows  # the chance that one band of a pair at the target matches
    reachable = 1 - (1 - hit) ** (num_perm // rows) >= recall  # with as many bands as num_perm holds
    if not reachable.any():
        return num_perm, 1
    rows, hit = rows[reachable], hit[reachable]
    with np.errstate(divide="ignore"):  # target 1: one band is enough
        bands = np.maximum(np.ceil(np.log1p(-recall) / np.log1p(-hit)), 1).astype(int)  # the fewest that reach recall
    xs = np.linspace(0, threshold, 201)
    false_positives = np.trapezoid(1 - (1 - xs ** rows[:, None]) ** bands[:, None], xs, axis=1)
    best = int(np.argmin(false_positives))
    return int(bands[best]), int(rows[best])


def band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 key per signature row for one band: rows with equal bins in the band get equal keys."""
    weights = np.uint64(0x100000001B3) ** np.arange(rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (sig[:, band * rows:(band + 1) * rows].astype(np.uint64) * weights).sum(axis=1)


def bucket_pairs(keys: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(m, 2) pairs (first member of a bucket of equal keys, another member); `index` ascending, so the first is the
    lowest index of its bucket."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1  # positions that repeat the previous key
    if len(same) == 0:
        return np.empty((0, 2), dtype=np.int64)
    run_start = np.maximum.accumulate(np.where(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]],
                                               np.arange(len(keys)), 0))
    return np.stack([index[order[run_start[same]]], index[order[same]]], axis=1)


def band_candidates(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(m, 2) index pairs (first member of a bucket, another member) that share at least one band."""
    index = np.arange(len(sig))
    pairs = [p for band in range(bands) if len(p := bucket_pairs(band_keys(sig, band, rows), index))]
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(pairs)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def agreement(sig: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Estimated Jaccard similarity of each pair: the fraction of equal signature bins."""
    out = np.empty(len(pairs))
    for start in range(0, len(pairs), chunk):
        a, b = pairs[start:start + chunk, 0], pairs[start:start + chunk, 1]
        out[start:start + chunk] = (sig[a] == sig[b]).mean(axis=1)
    return out


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected components by min-label propagation: each node's label is the lowest index in its component."""
    labels = np.arange(n)
    while len(edges):
        low = np.minimum(labels[edges[:, 0]], labels[edges[:, 1]])
        before = labels.copy()
        np.minimum.at(labels, edges[:, 0], low)
        np.minimum.at(labels, edges[:, 1], low)
        labels = labels[labels]  # pointer jumping
        if np.array_equal(labels, before):
            break
    return labels


def edge_components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, roots): every index in an edge, ascending, and the lowest index of its component; `components` over
    those indexes alone, so memory follows the edges (verified near duplicates), not the documents."""
    nodes = np.unique(edges)
    return nodes, nodes[components(len(nodes), np.searchsorted(nodes, edges))]
