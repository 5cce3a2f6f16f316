import json

import numpy as np
import pytest


from engine.data.clean import clean
from engine.data.dedup import near_duplicate_clusters
from engine.data.minhash import components, edge_components, signatures
from engine.data.ingest import content_hash
from engine.recipe import CleanSection, load_recipe


def row(i, user, answer, source="s"):
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"source": source, "row_id": f"{source}:{i}", "content_hash": content_hash(messages, None, None),
            "format": "alpaca", "kind": "sft", "messages": json.dumps(messages), "chosen": None, "rejected": None}


def test_minhash_estimates_jaccard():
    a = "the quick brown fox jumps over the lazy dog " * 3
    b = a.replace("lazy", "sleepy")
    sig = signatures([a, b], num_perm=256, k=5)
    grams = lambda t: {t[i:i + 5] for i in range(len(t) - 4)}
    true = len(grams(a) & grams(b)) / len(grams(a) | grams(b))
    assert abs((sig[0] == sig[1]).mean() - true) < 0.1


def test_near_duplicates_found_and_distinct_rows_kept():
    base = "Sort the numbers in ascending order, then explain nothing: 512, 77, 903, 18, 260, 444"
    texts = [base, base + "!", "Write the words in capitals: apple pear plum", "Add the two numbers: 123 + 456"]
    found = near_duplicate_clusters(texts, threshold=0.8, num_perm=128, k=5)
    assert [(kept, removed) for kept, removed, _ in found] == [(0, 1)]


def test_clean_removes_exact_and_near_duplicates_and_scrubs_pii():
    long = "Reverse the order of the words and reply with the result only please: alpha beta gamma delta"
    rows = [row(0, long, "delta gamma beta alpha"),
            row(1, long, "delta gamma beta alpha"),  # exact duplicate
            row(2, "  " + long.replace(" ", "  "), "delta gamma beta alpha"),  # duplicate once whitespace is normalized
            row(3, long + ".", "delta gamma beta alpha"),  # near duplicate
            row(4, "Mail bob@corp.example.com or call +1 (415) 555-2671 from 10.0.0.1", "ok"),
            row(5, "Add the two numbers. 101 + 202", "303"),
            row(6, "   ", "x")]  # empty once normalized
    tiny = load_recipe("tiny")[0].clean  # pii and near_dedup are opt-in: the tiny recipe turns them on
    kept, quarantine, clusters, report = clean(rows, tiny, ["s"])
    reasons = {q["row_id"]: q["reason"] for q in quarantine}
    assert reasons == {"s:1": "exact_duplicate", "s:2": "exact_duplicate", "s:3": "near_duplicate",
                       "s:6": "empty_after_normalization"}
    assert {r["row_id"] for r in kept} == {"s:0", "s:4", "s:5"}
    pii_row = json.loads(next(r for r in kept if r["row_id"] == "s:4")["messages"])[0]["content"]
    assert pii_row == "Mail <EMAIL> or call <PHONE> from <IP>"
    assert report["pii_scrubbed"] == {"email": 1, "phone": 1, "ip": 1}
    assert report["rows_in"] == len(kept) + len(quarantine)
    assert {(c["kind"], c["kept_row_id"], c["removed_row_id"]) for c in clusters} == {
        ("exact", "s:0", "s:1"), ("exact", "s:0", "s:2"), ("near", "s:0", "s:3")}
    assert [s["step"] for s in report["steps"]] == [s.step for s in tiny.steps]


def test_sample_data_duplicates_are_found(sample_rows):
    kept, quarantine, _, report = clean(sample_rows[0], load_recipe("tiny")[0].clean,
                                        ["alpaca_tasks", "sharegpt_tasks", "openai_tasks", "preference_tasks"])
    assert report["quarantine_by_reason"]["exact_duplicate"] >= 100  # 40 + 20 + 15 + 15 + 20 planted, plus variants
    assert report["quarantine_by_reason"]["near_duplicate"] >= 20  # 20 planted near-duplicate pairs
    assert len({(r["kind"], r["content_hash"]) for r in kept}) == len(kept)
    assert not any("@example.com" in r["messages"] or "4111 1111" in r["messages"] or "sk-test" in r["messages"]
                   for r in kept)
    assert report["quarantine_by_reason"]["repetitive"] == 1  # the planted spam row, and no chat turn
    # the sample's phone numbers are +1 (555) 301-xxxx: 555 is no US area code, so phonenumbers (VALID) leaves them
    assert report["pii_scrubbed"] == {"email": 5, "ip": 6, "credit_card": 1, "secret": 1}


def sft(i, text):
    return row(i, text, "ok")


def run_steps(rows, *steps):
    from pydantic import TypeAdapter

    from engine.recipe import CleanStep
    cfg = CleanSection(steps=[TypeAdapter(CleanStep).validate_python(s) for s in steps])
    return clean(rows, cfg, ["s"])


def test_pii_placeholders_replace_every_planted_secret():
    planted = {
        "mail a.b-c@mail.example.org now": "mail <EMAIL> now",
        "call (415) 555-2671 or +44 20 7946 0958": "call <PHONE> or <PHONE>",
        "call (555) 123-4567": "call (555) 123-4567",  # 555 is no US area code: not a valid number
        "from 10.20.30.40": "from <IP>",
        "card 4539 1488 0343 6467 please": "card <CREDIT_CARD> please",
        "not a card 1234 5678 9012 3456": "not a card 1234 5678 9012 3456",  # fails the Luhn check
        "key AKIAIOSFODNN7EXAMPLE and ghp_" + "a" * 36: "key <SECRET> and <SECRET>",
        "token: abcdef0123456789 set": "token: <SECRET> set",
    }
    kept, _, _, report = run_steps([sft(i, t) for i, t in enumerate(planted)], {"step": "pii"})
    assert [json.loads(r["messages"])[0]["content"] for r in kept] == list(planted.values())
    assert report["pii_scrubbed"] == {"email": 1, "phone": 2, "ip": 1, "credit_card": 1, "secret": 3}


def test_each_step_is_configurable_and_reported():
    rows = [sft(0, "<div>Hello&amp;welcome</div> to <b>the</b> show"), sft(1, "x"),
            sft(2, "we sell crypto here"), sft(3, " ".join(["spam eggs ham"] * 30)), sft(4, "fine text")]
    kept, quarantine, _, report = run_steps(
        rows, {"step": "strip_html"}, {"step": "length", "min_chars": 4},
        {"step": "blocklist", "words": ["Crypto"]}, {"step": "repetition", "ngram": 3, "min_words": 10})
    assert json.loads(kept[0]["messages"])[0]["content"] == "Hello&welcome to the show"
    assert {q["row_id"]: (q["stage"], q["reason"]) for q in quarantine} == {
        "s:1": ("clean:length", "too_short"), "s:2": ("clean:blocklist", "blocklisted"),
        "s:3": ("clean:repetition", "repetitive")}
    assert [(s["step"], s["rows_in"], s["rows_out"]) for s in report["steps"]] == [
        ("strip_html", 5, 5), ("length", 5, 4), ("blocklist", 4, 3), ("repetition", 3, 2)]


def test_near_dedup_takes_explicit_bands_and_rows():
    from pydantic import ValidationError

    from engine.recipe import NearDedupStep
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        NearDedupStep(step="near_dedup", num_perm=64, bands=16, rows=8)
    base = "Sort the numbers in ascending order, then explain nothing: 512, 77, 903, 18, 260, 444"
    kept, quarantine, _, _ = run_steps([sft(0, base), sft(1, base + "!")],
                                       {"step": "near_dedup", "num_perm": 128, "bands": 32, "rows": 4,
                                        "min_chars": 50})
    assert [q["row_id"] for q in quarantine] == ["s:1"]


def test_signatures_do_not_depend_on_neighbours_or_chunking():
    texts = ["abcdefgh", "ijklmnop", "abc", "", "naïve café — déjà vu ✓", "ijklmnop"] * 5
    whole = signatures(texts, num_perm=64, k=5)
    for chunk in (1, 2, 7):
        assert np.array_equal(signatures(texts, num_perm=64, k=5, chunk=chunk), whole)
    assert np.array_equal(whole[1], whole[5])  # the same text, wherever it stands
    assert not np.array_equal(whole[0], whole[1])


def test_clusters_keep_their_lowest_index_and_chain():
    base = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma"
    texts = ["unrelated text about sorting numbers 1 2 3", base + "!", "another unrelated line of words", base,
             base + "!!"]
    found = near_duplicate_clusters(texts, threshold=0.8, num_perm=128, k=5)
    assert sorted((kept, removed) for kept, removed, _ in found) == [(1, 3), (1, 4)]


@pytest.mark.parametrize("seed", range(5))
def test_components_over_the_edges_nodes_are_those_over_every_document(seed):
    """edge_components labels only the documents in an edge; each gets the lowest index of its component, as
    components over all n documents gives it (chains, stars, isolated documents, repeated and reversed edges)."""
    rng = np.random.default_rng(seed)
    n = 200
    edges = rng.integers(0, n, (int(rng.integers(0, 150)), 2))
    edges = np.concatenate([edges, edges[::-1, ::-1]])  # each edge again, the other way round
    labels = components(n, edges)
    nodes, roots = edge_components(edges)
    assert np.array_equal(nodes, np.unique(edges))
    assert np.array_equal(roots, labels[nodes])
    outside = np.setdiff1d(np.arange(n), nodes)
    assert np.array_equal(labels[outside], outside)  # a document in no edge is its own root: nothing to hold for it


def test_length_in_tokens_counts_with_the_given_tokenizer():
    rows = [sft(0, "one two"), sft(1, "one two three four five six"), sft(2, " ".join(["w"] * 40))]
    count_words = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    from pydantic import TypeAdapter

    from engine.recipe import CleanStep
    cfg = CleanSection(steps=[TypeAdapter(CleanStep).validate_python(
        {"step": "length", "min_tokens": 4, "max_tokens": 30})])
    kept, quarantine, _, _ = clean(rows, cfg, ["s"], count_tokens=count_words)
    assert {q["row_id"]: q["reason"] for q in quarantine} == {"s:0": "too_few_tokens", "s:2": "too_many_tokens"}
    assert [r["row_id"] for r in kept] == ["s:1"]
    with pytest.raises(ValueError, match="no tokenizer"):
        clean(rows, cfg, ["s"])


def planted_pairs(count, low, high, seed, words):
    """`count` (original, copy) pairs of ~500-character word documents whose true 5-gram Jaccard is in [low, high):
    `words` (lowest, highest) replaced, about 0.04 less Jaccard each."""
    rng = np.random.default_rng(seed)
    vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 11))) for _ in range(5000)]
    grams = lambda t: {t[i:i + 5] for i in range(len(t) - 4)}  # noqa: E731
    pairs = []
    while len(pairs) < count:
        original = " ".join(vocab[w] for w in rng.integers(0, len(vocab), 80))[:500]
        tokens = original.split(" ")
        for position in rng.integers(0, len(tokens), rng.integers(words[0], words[1] + 1)):
            tokens[position] = vocab[rng.integers(0, len(vocab))]
        copy = " ".join(tokens)
        if low <= len(grams(original) & grams(copy)) / len(grams(original) | grams(copy)) < high:
            pairs.append((original, copy))
    return pairs


def found_pairs(pairs, threshold):
    """How many planted pairs end in one cluster."""
    texts = [text for pair in pairs for text in pair]
    kept = dict((removed, kept) for kept, removed, _ in near_duplicate_clusters(texts, threshold, 128, 5))
    return sum(kept.get(2 * i + 1, 2 * i + 1) == kept.get(2 * i, 2 * i) for i in range(len(pairs)))


def test_pairs_just_above_the_threshold_margin_are_found():
    # datasketch's FP + FN balance (9 bands of 14 rows at 0.8) made a pair at 0.86-0.90 a candidate ~4 times in 5
    pairs = planted_pairs(300, 0.86, 0.90, seed=1, words=(2, 4))
    assert found_pairs(pairs, threshold=0.8) >= 0.98 * len(pairs)


def test_pairs_well_below_the_threshold_are_kept():
    assert found_pairs(planted_pairs(300, 0.3, 0.6, seed=2, words=(12, 25)), threshold=0.8) == 0


def test_bands_make_a_pair_at_the_margin_a_candidate_almost_surely():
    from engine.data.minhash import lsh_params
    for threshold, num_perm in [(0.5, 128), (0.7, 64), (0.8, 128), (0.8, 256), (0.9, 128), (0.95, 64)]:
        bands, rows = lsh_params(threshold, num_perm)
        assert bands * rows <= num_perm
        assert 1 - (1 - (threshold + 0.05) ** rows) ** bands >= 0.995
    assert lsh_params(1.0, 128) == (1, 128)  # only identical signatures: one band of all of them
