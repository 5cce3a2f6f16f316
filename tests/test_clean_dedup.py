import json


from engine.data.clean import clean
from engine.data.dedup import minhash_signatures, near_duplicate_clusters
from engine.data.ingest import content_hash
from engine.recipe import CleanSection


def row(i, user, answer, source="s"):
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"source": source, "row_id": f"{source}:{i}", "content_hash": content_hash(messages, None, None),
            "format": "alpaca", "kind": "sft", "messages": json.dumps(messages), "chosen": None, "rejected": None}


def test_minhash_estimates_jaccard():
    a = "the quick brown fox jumps over the lazy dog " * 3
    b = a.replace("lazy", "sleepy")
    sig = minhash_signatures([a, b], num_perm=256, k=5)
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
            row(4, "Mail bob@corp.example.com or call +1 (555) 123-4567 from 10.0.0.1", "ok"),
            row(5, "Add the two numbers. 101 + 202", "303"),
            row(6, "   ", "x")]  # empty once normalized
    kept, quarantine, report = clean(rows, CleanSection(), ["s"])
    reasons = {q["row_id"]: q["reason"] for q in quarantine}
    assert reasons == {"s:1": "exact_duplicate", "s:2": "exact_duplicate", "s:3": "near_duplicate",
                       "s:6": "empty_after_normalization"}
    assert {r["row_id"] for r in kept} == {"s:0", "s:4", "s:5"}
    pii_row = json.loads(next(r for r in kept if r["row_id"] == "s:4")["messages"])[0]["content"]
    assert pii_row == "Mail <EMAIL> or call <PHONE> from <IP>"
    assert report["pii_scrubbed"] == {"email": 1, "phone": 1, "ip": 1}
    assert report["rows_in"] == len(kept) + len(quarantine)


def test_sample_data_duplicates_are_found(sample_rows):
    kept, quarantine, report = clean(sample_rows[0], CleanSection(), ["alpaca_tasks", "sharegpt_tasks",
                                                                      "openai_tasks", "preference_tasks"])
    assert report["quarantine_by_reason"]["exact_duplicate"] >= 100  # 40 + 20 + 15 + 15 + 20 planted, plus variants
    assert report["quarantine_by_reason"]["near_duplicate"] >= 20  # 20 planted near-duplicate pairs
    assert len({(r["kind"], r["content_hash"]) for r in kept}) == len(kept)
    assert not any("@example.com" in r["messages"] for r in kept)
