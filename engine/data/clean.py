"""Cleaning: normalize, filter by length, scrub PII, remove exact and near duplicates.

Every removed row goes to quarantine with its stage, reason and detail; counts per reason go to
the report. Rows are ordered (source priority, row index) first, so the kept member of each
duplicate group is deterministic.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

from engine.data.dedup import exact_duplicates, near_duplicate_clusters
from engine.data.ingest import content_hash
from engine.recipe import CleanSection

PII_PATTERNS = {
    "EMAIL": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "IP": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "PHONE": re.compile(r"(?<!\w)\+?\d{1,3}[\s.-]?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}(?!\w)"),
}


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def scrub_pii(text: str, counts: Counter) -> str:
    for label, pattern in PII_PATTERNS.items():
        text, n = pattern.subn(f"<{label}>", text)
        counts[label.lower()] += n
    return text


def row_texts(row: dict, with_system: bool = True) -> list[str]:
    turns = [m["content"] for m in row["messages"] if with_system or m["role"] != "system"]
    return turns + [t for t in (row["chosen"], row["rejected"]) if t]


def row_position(row_id: str) -> tuple[str, int]:
    """`source[:file]:index` -> (file, index), so rows sort in file order, then numerically."""
    head, index = row_id.rsplit(":", 1)
    return head, int(index)


def clean(rows: list[dict], cfg: CleanSection, source_order: list[str]) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, quarantined rows, report). Input rows are ingest's normalized rows."""
    priority = {name: i for i, name in enumerate(source_order)}
    rows = sorted(rows, key=lambda r: (priority.get(r["source"], len(priority)), *row_position(r["row_id"])))
    quarantine: list[dict] = []
    pii: Counter = Counter()

    def drop(row: dict, reason: str, detail: str) -> None:
        quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": "clean",
                           "reason": reason, "detail": detail})

    kept = []
    for row in rows:
        messages = [{**m, "content": normalize_text(m["content"])} for m in json.loads(row["messages"])]
        chosen, rejected = (normalize_text(t) if t else t for t in (row["chosen"], row["rejected"]))
        row = {**row, "messages": messages, "chosen": chosen, "rejected": rejected}
        chars = sum(len(t) for t in row_texts(row))
        if chars < cfg.min_chars:
            drop(row, "too_short", f"{chars} characters < min_chars {cfg.min_chars}")
        elif chars > cfg.max_chars:
            drop(row, "too_long", f"{chars} characters > max_chars {cfg.max_chars}")
        elif any(not t for t in row_texts(row)):
            drop(row, "empty_after_normalization", "a message is empty once whitespace is normalized")
        else:
            kept.append(row)

    if cfg.scrub_pii:
        for row in kept:
            row["messages"] = [{**m, "content": scrub_pii(m["content"], pii)} for m in row["messages"]]
            row["chosen"], row["rejected"] = (scrub_pii(t, pii) if t else t for t in (row["chosen"], row["rejected"]))
    for row in kept:
        row["content_hash"] = content_hash(row["messages"], row["chosen"], row["rejected"], row.get("tools"),
                                           row.get("label"))

    removed: set[int] = set()
    for first, dup in exact_duplicates([f"{r['kind']}:{r['content_hash']}" for r in kept]):
        removed.add(dup)
        drop(kept[dup], "exact_duplicate", f"same normalized content as {kept[first]['row_id']}")
    survivors = [r for i, r in enumerate(kept) if i not in removed]

    removed = set()
    for kind in ("sft", "preference", "kto"):
        idx = [i for i, r in enumerate(survivors) if r["kind"] == kind]
        # system prompts are boilerplate shared by design: they would make distinct short rows look alike
        texts = ["\n".join(row_texts(survivors[i], with_system=False)) for i in idx]
        for a, b, jaccard in near_duplicate_clusters(texts, cfg.near_dup_threshold, cfg.num_perm, cfg.shingle_size):
            removed.add(idx[b])
            drop(survivors[idx[b]], "near_duplicate", f"~{jaccard:.2f} Jaccard with {survivors[idx[a]]['row_id']}")
    final = [r for i, r in enumerate(survivors) if i not in removed]
    for row in final:
        row["messages"] = json.dumps(row["messages"], ensure_ascii=False)

    report = {
        "rows_in": len(rows), "rows_out": len(final), "quarantined": len(quarantine),
        "quarantine_by_reason": dict(Counter(q["reason"] for q in quarantine)),
        "pii_scrubbed": dict(pii),
        "rows_out_by_source": dict(Counter(r["source"] for r in final)),
    }
    return final, quarantine, report
