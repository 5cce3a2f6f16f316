"""Near-duplicate removal at scale: tuneline's vectorised MinHash LSH against datasketch's MinHashLSH.

Generates N documents of about 500 characters (seeded) with planted exact copies and near copies whose true
character 5-gram Jaccard spans about 0.6 to 1.0 (1 to 12 words replaced), and computes each planted pair's true
Jaccard from its exact shingle sets. Runs our dedup on all documents and datasketch (same shingles, num_perm,
threshold) on the first --baseline-docs, in this process, and prints throughput, the ratio, recall by band of true
similarity, precision and peak memory.

A planted pair is found when both rows end in one cluster (one kept row). Recall counts near copies at true
Jaccard >= threshold + 0.05; copies below the threshold are not duplicates, and are reported only to show how
often they are removed. A removed row is a false positive when its true Jaccard to the row it was kept for is
below threshold - 0.05 (estimates near the threshold fall on either side of it: a tolerance of about 1.5 standard
errors of a 128-bin estimate). Goals for 1M documents on 2 cores: <= 60 s, >= 10x datasketch, recall >= 0.98,
precision >= 0.99, < 4 GB resident.

With --indexed, documents come from IndexedCorpus instead: the same construction, but any document is computed
from its index, so texts stream without being held. Then --memory-gb GB streams them through the bounded path
(data.memory_gb: spilled partitions under --spill-dir) and without it the same texts are held in a list for the
in-memory path; the two print the same digest of the kept rows. Recall and precision are then scored on a sample
of --score-pairs planted pairs and removed rows. Run each setting in a fresh process: the peak is the process's.

Usage: .venv/bin/python bench/dedup.py [--docs 1000000] [--baseline-docs 20000]
       .venv/bin/python bench/dedup.py --indexed --docs 10000000 --memory-gb 4 [--spill-dir /tmp]
(datasketch comes with `pip install -e '.[bench]'`)
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data.dedup import exact_duplicates, near_duplicate_clusters  # noqa: E402
from engine.data.minhash import mix64  # noqa: E402

THRESHOLD, NUM_PERM, SHINGLE = 0.8, 128, 5
MARGIN, TOLERANCE = 0.05, 0.05  # recall: pairs at threshold + MARGIN; wrong: removals below threshold - TOLERANCE
BANDS = [(0.0, 0.75), (0.75, 0.80), (0.80, 0.85), (0.85, 0.90), (0.90, 0.95), (0.95, 1.0)]  # of true Jaccard


def generate(n: int, seed: int = 7, planted: float = 0.05) -> tuple[list[str], np.ndarray, np.ndarray]:
    """n documents, and the planted (original, copy) index pairs: `planted` exact copies then `planted` near copies."""
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
    for i, replaced in zip(near_of, rng.integers(1, 13, n_copies), strict=True):  # each word: ~0.04 less Jaccard
        tokens = base[i].split(" ")
        for position in rng.integers(0, len(tokens) - 1, replaced):
            tokens[position] = vocab[rng.integers(0, len(vocab))]
        near.append(" ".join(tokens))
    texts = base + [base[i] for i in exact_of] + near
    order = rng.permutation(n)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)  # where each generated text lands after shuffling
    pairs = np.stack([position[np.concatenate([exact_of, near_of])], position[n_base:]], axis=1)
    return [texts[i] for i in order], pairs


class IndexedCorpus:
    """generate()'s construction with every document computed from its index (words from a 64-bit hash of
    (document, position)): n documents, `planted` exact copies and `planted` near copies, shuffled."""

    WORDS, REPLACED = 80, 12

    def __init__(self, n: int, seed: int = 7, planted: float = 0.05):
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        self.vocab = np.array(["".join(rng.choice(letters, rng.integers(3, 11))) for _ in range(30000)], dtype=object)
        self.n, self.n_copies = n, int(n * planted)
        self.n_base = n - 2 * self.n_copies
        self.exact_of = rng.integers(0, self.n_base, self.n_copies)
        self.near_of = rng.integers(0, self.n_base, self.n_copies)
        self.replaced = rng.integers(1, self.REPLACED + 1, self.n_copies)
        self.order = rng.permutation(n)  # position -> generated document
        position = np.empty(n, dtype=np.int64)
        position[self.order] = np.arange(n)
        self.pairs = np.stack([position[np.concatenate([self.exact_of, self.near_of])], position[self.n_base:]],
                              axis=1)
        del position

    def hashes(self, ids: np.ndarray, width: int, salt: int) -> np.ndarray:
        x = (ids.astype(np.uint64)[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)
             + np.uint64(salt << 40))
        return mix64(x)

    def base(self, ids: np.ndarray) -> list[str]:
        words = self.vocab[(self.hashes(ids, self.WORDS, 1) % np.uint64(len(self.vocab))).astype(np.int64)]
        return [" ".join(row)[:500] for row in words.tolist()]

    def generated(self, ids: np.ndarray) -> list[str]:
        """The texts of generated documents `ids` (base, then exact copies, then near copies)."""
        out = np.empty(len(ids), dtype=object)
        kind = (ids >= self.n_base).astype(int) + (ids >= self.n_base + self.n_copies)
        out[kind == 0] = self.base(ids[kind == 0])
        out[kind == 1] = self.base(self.exact_of[ids[kind == 1] - self.n_base])
        near = ids[kind == 2] - self.n_base - self.n_copies
        positions = self.hashes(near, self.REPLACED, 2)
        words = (self.hashes(near, self.REPLACED, 3) % np.uint64(len(self.vocab))).astype(np.int64)
        texts = []
        for text, count, pos, word in zip(self.base(self.near_of[near]), self.replaced[near], positions, words,
                                          strict=True):
            tokens = text.split(" ")
            for p, w in zip(pos[:count] % np.uint64(len(tokens) - 1), word[:count], strict=True):
                tokens[int(p)] = self.vocab[w]
            texts.append(" ".join(tokens))
        out[kind == 2] = texts
        return out.tolist()

    def __getitem__(self, position: int) -> str:
        return self.generated(self.order[[position]])[0]

    def stream(self, positions: np.ndarray | None = None, block: int = 50_000):
        """The texts at `positions` (all, in order, by default), generated a block at a time."""
        positions = np.arange(self.n) if positions is None else positions
        for start in range(0, len(positions), block):
            yield from self.generated(self.order[positions[start:start + block]])


def shingles(text: str) -> set[str]:
    return {text[i:i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}


def jaccard(a: str, b: str) -> float:
    """The true Jaccard similarity of two texts' character shingle sets (what MinHash estimates)."""
    if a == b:
        return 1.0
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def ours(texts: list[str]) -> np.ndarray:
    """What the clean step does: exact duplicates first, then near duplicates among the rest; each row's kept row."""
    kept = np.arange(len(texts))
    for first, dup in exact_duplicates(texts):
        kept[dup] = first
    rest = np.flatnonzero(kept == np.arange(len(texts)))
    found = near_duplicate_clusters([texts[i] for i in rest], THRESHOLD, NUM_PERM, SHINGLE)
    if found:
        kept_in_rest, removed_in_rest, _ = np.array(found).T
        kept[rest[removed_in_rest.astype(np.int64)]] = rest[kept_in_rest.astype(np.int64)]
    return kept[kept]  # an exact copy of a near duplicate is kept for the near duplicate's kept row


def ours_indexed(corpus: IndexedCorpus, memory_gb: float | None, spill_dir: Path | None) -> np.ndarray:
    """ours() over the indexed corpus: streamed through the bounded path with `memory_gb`, else held in a list."""
    held = None if memory_gb else list(corpus.stream())
    kept = np.arange(corpus.n)
    for first, dup in exact_duplicates(held if held is not None else corpus.stream(), memory_gb, spill_dir):
        kept[dup] = first
    rest = np.flatnonzero(kept == np.arange(corpus.n))
    texts = [held[i] for i in rest] if held is not None else corpus.stream(rest)
    del held
    found = near_duplicate_clusters(texts, THRESHOLD, NUM_PERM, SHINGLE, memory_gb=memory_gb, spill_dir=spill_dir)
    if found:
        kept_in_rest, removed_in_rest, _ = np.array(found).T
        del found
        kept[rest[removed_in_rest.astype(np.int64)]] = rest[kept_in_rest.astype(np.int64)]
    return kept[kept]


def score_indexed(kept: np.ndarray, corpus: IndexedCorpus, sample: int, seed: int = 11) -> dict:
    """score() on `sample` planted pairs (true Jaccard computed for those) and `sample` removed rows."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(corpus.pairs), min(sample, len(corpus.pairs)), replace=False))
    pairs = corpus.pairs[chosen]
    near = chosen >= len(corpus.pairs) // 2
    truth = np.array([jaccard(corpus[a], corpus[b]) for a, b in pairs])
    found = kept[pairs[:, 0]] == kept[pairs[:, 1]]
    goal = near & (truth >= THRESHOLD + MARGIN)
    removed = np.flatnonzero(kept != np.arange(len(kept)))
    checked = rng.choice(removed, min(sample, len(removed)), replace=False) if len(removed) else removed
    wrong = sum(jaccard(corpus[i], corpus[kept[i]]) < THRESHOLD - TOLERANCE for i in checked)
    return {"recall": found[goal].mean() if goal.any() else float("nan"), "pairs": int(goal.sum()),
            "exact copies": found[~near].mean() if (~near).any() else float("nan"),
            "precision": 1 - wrong / max(len(checked), 1), "removed": len(removed), "wrong": int(wrong),
            "checked": len(checked)}


def main_indexed(args) -> None:
    started = time.perf_counter()
    corpus = IndexedCorpus(args.docs)
    print(f"indexed corpus of {corpus.n:,} documents ({corpus.n_copies:,} exact and {corpus.n_copies:,} near "
          f"copies), set up in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    kept = ours_indexed(corpus, args.memory_gb, args.spill_dir)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    digest = hashlib.sha256(kept.astype("<i8").tobytes()).hexdigest()[:16]
    r = score_indexed(kept, corpus, args.score_pairs)
    mode = f"memory_gb {args.memory_gb:g} (streamed)" if args.memory_gb else "in memory (texts held in a list)"
    print(f"{mode}: {corpus.n:,} docs in {seconds:.1f}s ({corpus.n / seconds:,.0f} docs/s, generation included), "
          f"peak resident memory {peak_gb:.2f} GB (whole process)")
    print(f"kept rows digest {digest}, {r['removed']:,} removed; on a sample: recall@{THRESHOLD + MARGIN:.2f} "
          f"{r['recall']:.4f} over {r['pairs']:,} planted near pairs, exact copies found {r['exact copies']:.4f}, "
          f"precision {r['precision']:.4f} ({r['wrong']} wrong of {r['checked']:,} removed rows checked)")


def datasketch_baseline(texts: list[str]) -> np.ndarray:
    """The same two steps with datasketch: each row's kept row (the lowest-numbered match for a near duplicate)."""
    from datasketch import MinHash, MinHashLSH
    kept, seen = np.arange(len(texts)), {}
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for i, text in enumerate(texts):
        if text in seen:
            kept[i] = seen[text]
            continue
        seen[text] = i
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([text[j:j + SHINGLE].encode() for j in range(max(1, len(text) - SHINGLE + 1))])
        if matches := lsh.query(m):
            kept[i] = min(map(int, matches))
        else:
            lsh.insert(str(i), m)
    return kept


def score(kept: np.ndarray, texts: list[str], pairs: np.ndarray, truth: np.ndarray) -> dict:
    """Recall by band of true Jaccard over the planted pairs inside `kept`, and precision over its removed rows."""
    near = np.arange(len(pairs)) >= len(pairs) // 2  # generate plants the exact copies first
    inside = (pairs < len(kept)).all(axis=1)
    pairs, truth, near = pairs[inside], truth[inside], near[inside]
    found = kept[pairs[:, 0]] == kept[pairs[:, 1]]
    goal = near & (truth >= THRESHOLD + MARGIN)
    bands = {f"{lo:.2f}-{hi:.2f}": (near & (truth >= lo) & (truth < hi if hi < 1 else truth <= hi)) for lo, hi in BANDS}
    bands["exact copies"] = ~near
    removed = np.flatnonzero(kept != np.arange(len(kept)))
    wrong = sum(jaccard(texts[i], texts[kept[i]]) < THRESHOLD - TOLERANCE for i in removed)
    return {"recall": found[goal].mean() if goal.any() else float("nan"), "pairs": int(goal.sum()),
            "bands": {name: (int(mask.sum()), found[mask].mean() if mask.any() else float("nan"))
                      for name, mask in bands.items()},
            "precision": 1 - wrong / max(len(removed), 1), "removed": len(removed), "wrong": int(wrong)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--baseline-docs", type=int, default=20_000)
    parser.add_argument("--indexed", action="store_true", help="documents computed from their index (streamable)")
    parser.add_argument("--memory-gb", type=float, default=None, help="with --indexed: stream through the bounded "
                        "path with this data.memory_gb")
    parser.add_argument("--spill-dir", type=Path, default=None, help="where spilled partitions go (default: $TMPDIR)")
    parser.add_argument("--score-pairs", type=int, default=20_000, help="with --indexed: planted pairs and removed "
                        "rows scored")
    args = parser.parse_args()
    if args.indexed:
        return main_indexed(args)

    started = time.perf_counter()
    texts, pairs = generate(args.docs)
    truth = np.array([jaccard(texts[a], texts[b]) for a, b in pairs])
    near = truth[len(truth) // 2:]
    print(f"generated {len(texts):,} documents, mean {np.mean([len(t) for t in texts[:10000]]):.0f} characters, "
          f"{len(pairs) // 2:,} exact and {len(near):,} near copies (true Jaccard {near.min():.2f}-{near.max():.2f}, "
          f"median {np.median(near):.2f}), in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    kept = ours(texts)
    ours_s = time.perf_counter() - started
    mine = score(kept, texts, pairs, truth)

    subset = texts[:args.baseline_docs]
    started = time.perf_counter()
    base_kept = datasketch_baseline(subset)
    base_s = time.perf_counter() - started
    base = score(base_kept, subset, pairs, truth)

    ours_rate, base_rate = len(texts) / ours_s, len(subset) / base_s
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    at = f"recall@{THRESHOLD + MARGIN:.2f}"
    print(f"\n{'':<12} {'documents':>10} {'seconds':>8} {'docs/s':>10} {at:>12} {'pairs':>7} {'precision':>9} "
          f"{'removed':>8} {'wrong':>6}")
    for name, n, seconds, rate, r in (("tuneline", len(texts), ours_s, ours_rate, mine),
                                      ("datasketch", len(subset), base_s, base_rate, base)):
        print(f"{name:<12} {n:>10,} {seconds:>8.1f} {rate:>10,.0f} {r['recall']:>12.4f} {r['pairs']:>7,} "
              f"{r['precision']:>9.4f} {r['removed']:>8,} {r['wrong']:>6,}")
    print(f"\nfound, by band of true Jaccard (threshold {THRESHOLD}; below {THRESHOLD - TOLERANCE:.2f}: should not be)")
    print(f"{'':<14} {'pairs':>8} {'tuneline':>9} {'pairs':>7} {'datasketch':>10}")
    for band, (n, found) in mine["bands"].items():
        base_n, base_found = base["bands"][band]
        print(f"{band:<14} {n:>8,} {found:>9.4f} {base_n:>7,} {base_found:>10.4f}")
    print(f"\nthroughput ratio tuneline/datasketch: {ours_rate / base_rate:.1f}x")
    print(f"peak resident memory (whole process): {peak_gb:.2f} GB")
    goals = {f"{len(texts):,} docs in <= 60 s": ours_s <= 60, ">= 10x datasketch": ours_rate / base_rate >= 10,
             f"recall >= 0.98 at true Jaccard >= {THRESHOLD + MARGIN:.2f}": mine["recall"] >= 0.98,
             "precision >= 0.99": mine["precision"] >= 0.99, "< 4 GB resident": peak_gb < 4}
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISSED'} {goal}")


if __name__ == "__main__":
    main()
