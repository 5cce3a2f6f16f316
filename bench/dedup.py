"""Near-duplicate removal at scale: tuneline's vectorised MinHash LSH against datasketch's MinHashLSH.

Generates N documents of about 500 characters (seeded) with planted exact and near duplicates, so the
ground truth is known; runs our dedup on all of them and datasketch (same shingles, num_perm, threshold)
on the first --baseline-docs, in this process; prints throughput, the ratio, recall, precision and peak
memory. Goals for 1M documents on 2 cores: <= 60 s, >= 10x datasketch, recall >= 0.95,
precision >= 0.99, < 4 GB resident.

Usage: .venv/bin/python bench/dedup.py [--docs 1000000] [--baseline-docs 20000]
(datasketch comes with `pip install -e '.[bench]'`)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data.dedup import exact_duplicates, near_duplicate_clusters  # noqa: E402

THRESHOLD, NUM_PERM, SHINGLE = 0.8, 128, 5


def generate(n: int, seed: int = 7, planted: float = 0.05) -> tuple[list[str], np.ndarray]:
    """n documents and their ground-truth cluster ids: `planted` exact copies, `planted` near copies."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 11))) for _ in range(30000)]
    n_copies = int(n * planted)
    n_base = n - 2 * n_copies
    base = []
    for start in range(0, n_base, 100_000):  # in chunks: the word matrix of all documents would be GBs
        words = rng.integers(0, len(vocab), size=(min(100_000, n_base - start), 80), dtype=np.int32)
        base += [" ".join(vocab[w] for w in row)[:500] for row in words]
    exact_of = rng.integers(0, n_base, n_copies)
    near_of = rng.integers(0, n_base, n_copies)
    near = []
    for i in near_of:  # two words replaced: a character 5-gram Jaccard of about 0.85 to 0.95
        tokens = base[i].split(" ")
        for position in rng.integers(0, len(tokens) - 1, 2):
            tokens[position] = vocab[rng.integers(0, len(vocab))]
        near.append(" ".join(tokens))
    texts = base + [base[i] for i in exact_of] + near
    cluster = np.concatenate([np.arange(n_base), exact_of, near_of])
    order = rng.permutation(n)
    return [texts[i] for i in order], cluster[order]


def ours(texts: list[str]) -> set[int]:
    """What the clean step does: exact duplicates first, then near duplicates among the rest."""
    removed = {dup for _, dup in exact_duplicates(texts)}
    rest = [i for i in range(len(texts)) if i not in removed]
    found = near_duplicate_clusters([texts[i] for i in rest], THRESHOLD, NUM_PERM, SHINGLE)
    return removed | {rest[dup] for _, dup, _ in found}


def datasketch_baseline(texts: list[str]) -> set[int]:
    from datasketch import MinHash, MinHashLSH
    removed, seen = set(), {}
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for i, text in enumerate(texts):
        if text in seen:
            removed.add(i)
            continue
        seen[text] = i
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([text[j:j + SHINGLE].encode() for j in range(max(1, len(text) - SHINGLE + 1))])
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(str(i), m)
    return removed


def score(removed: set[int], cluster: np.ndarray) -> tuple[float, float]:
    """Recall and precision against the planted clusters: each cluster should keep exactly one member."""
    sizes = np.bincount(cluster)
    expected = int((sizes[sizes > 1] - 1).sum())
    hits = np.bincount(cluster[sorted(removed)], minlength=len(sizes)) if removed else np.zeros(len(sizes), int)
    true_positives = int(np.minimum(hits, np.maximum(sizes - 1, 0)).sum())
    return true_positives / max(expected, 1), true_positives / max(len(removed), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--baseline-docs", type=int, default=20_000)
    args = parser.parse_args()

    started = time.perf_counter()
    texts, cluster = generate(args.docs)
    print(f"generated {len(texts):,} documents, mean {np.mean([len(t) for t in texts[:10000]]):.0f} characters, "
          f"in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    removed = ours(texts)
    ours_s = time.perf_counter() - started
    recall, precision = score(removed, cluster)

    subset = texts[:args.baseline_docs]
    started = time.perf_counter()
    base_removed = datasketch_baseline(subset)
    base_s = time.perf_counter() - started
    base_recall, base_precision = score(base_removed, cluster[:args.baseline_docs])

    ours_rate, base_rate = len(texts) / ours_s, len(subset) / base_s
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\n{'':<12} {'documents':>10} {'seconds':>8} {'docs/s':>10} {'recall':>7} {'precision':>9}")
    print(f"{'tuneline':<12} {len(texts):>10,} {ours_s:>8.1f} {ours_rate:>10,.0f} {recall:>7.4f} {precision:>9.4f}")
    print(f"{'datasketch':<12} {len(subset):>10,} {base_s:>8.1f} {base_rate:>10,.0f} {base_recall:>7.4f} "
          f"{base_precision:>9.4f}")
    print(f"\nthroughput ratio tuneline/datasketch: {ours_rate / base_rate:.1f}x")
    print(f"peak resident memory (whole process): {peak_gb:.2f} GB")
    goals = {f"{len(texts):,} docs in <= 60 s": ours_s <= 60, ">= 10x datasketch": ours_rate / base_rate >= 10,
             "recall >= 0.95": recall >= 0.95, "precision >= 0.99": precision >= 0.99, "< 4 GB resident": peak_gb < 4}
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISSED'} {goal}")


if __name__ == "__main__":
    main()
