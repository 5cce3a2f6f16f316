"""Cleaning: the recipe's ordered steps, each rewriting rows or removing them to quarantine with a reason.

Rows are ordered (source priority, file, row index) first, so the kept member of each duplicate
group is deterministic. Every step is reported on its own: rows in, rows out, removals by reason.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Callable

from engine.data.dedup import exact_duplicates, near_duplicate_clusters
from engine.data.ingest import content_hash
from engine.tables import CLUSTER_COLUMNS, QUARANTINE_COLUMNS, ROW_COLUMNS, read_rows, write_rows

if TYPE_CHECKING:
    from engine.recipe import CleanSection
    from engine.stage import StageRun

PII_PATTERNS = {  # order matters: card numbers before phone numbers, which would match their digits
    "secret": re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|xox[abprs]-[A-Za-z0-9-]{10,}"
                         r"|AIza[0-9A-Za-z_-]{35})\b|(?i:\b(?:api[_-]?key|secret|token|password)\s*[:=]\s*)[^\s,;]{8,}"),
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "credit_card": re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "phone": re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(?\d{1,4}\)?[\s.-]?){1,4}\d{2,4}"  # international
                        r"|\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4})(?!\w)"),  # North American
}
HTML_TAG = re.compile(r"<(?:/?([A-Za-z][A-Za-z0-9-]*)(?:\s[^<>]*)?/?|!--.*?--)>", re.S)
INLINE_TAGS = {"a", "abbr", "b", "code", "em", "i", "mark", "s", "small", "span", "strong", "sub", "sup", "u"}
SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>|<[A-Z_]+>")  # chat-template markers and our PII placeholders stay


def luhn_valid(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def scrub_pii(text: str, kinds: list[str], counts: Counter) -> str:
    """Replace each kind of personal data or secret with a typed placeholder such as <EMAIL>."""
    for kind, pattern in PII_PATTERNS.items():
        if kind not in kinds:
            continue

        def replace(match: re.Match, kind=kind) -> str:
            if kind == "credit_card" and not luhn_valid(re.sub(r"\D", "", match.group())):
                return match.group()  # a long number that is not a card number
            counts[kind] += 1
            return f"<{kind.upper()}>"
        text = pattern.sub(replace, text)
    return text


def strip_html(text: str) -> str:
    """Markup out, entities decoded; inline tags vanish, block tags leave a space between the words they split."""
    def replace(match: re.Match) -> str:
        if SPECIAL_TOKEN.fullmatch(match.group()):
            return match.group()
        return "" if (match.group(1) or "").lower() in INLINE_TAGS else " "
    return html.unescape(HTML_TAG.sub(replace, text))


def repeated_fraction(text: str, n: int) -> float:
    """Gopher: the share of characters in words covered by an n-gram that occurs more than once."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = set()
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered.update(range(i, i + n))
    total = sum(len(w) for w in words)
    return sum(len(words[i]) for i in covered) / total if total else 0.0


def row_texts(row: dict, with_system: bool = True) -> list[str]:
    turns = [m["content"] for m in row["messages"] if with_system or m["role"] != "system"]
    return turns + [t for t in (row["chosen"], row["rejected"]) if t]


def dedup_text(row: dict) -> str:
    """The text near-duplicates are judged on (near_dedup and decontamination alike): every turn but the system
    prompt, which is boilerplate shared by design and would make distinct short rows look alike."""
    return "\n".join(row_texts(row, with_system=False))


def rewrite(row: dict, fn: Callable[[str], str]) -> dict:
    """The row with `fn` applied to every text; records whether anything changed."""
    messages = [{**m, "content": fn(m["content"])} for m in row["messages"]]
    chosen, rejected = (fn(t) if t else t for t in (row["chosen"], row["rejected"]))
    changed = messages != row["messages"] or chosen != row["chosen"] or rejected != row["rejected"]
    return {**row, "messages": messages, "chosen": chosen, "rejected": rejected, "_changed": changed}


def row_position(row_id: str) -> tuple[str, int]:
    """`source[:file]:index` -> (source[:file], index), so rows sort in file order, then numerically."""
    head, index = row_id.rsplit(":", 1)
    return head, int(index)


def current_hash(row: dict) -> str:
    return content_hash(row["messages"], row["chosen"], row["rejected"], row.get("tools"), row.get("label"))


class Cleaner:
    """Runs the steps over rows, collecting quarantine, duplicate clusters and a per-step report."""

    def __init__(self, rows: list[dict], count_tokens: Callable[[str], int] | None = None):
        self.rows = [{**r, "messages": json.loads(r["messages"])} for r in rows]
        self.count_tokens = count_tokens
        self.quarantine: list[dict] = []
        self.clusters: list[dict] = []
        self.pii_counts: Counter = Counter()
        self.steps: list[dict] = []
        self.step = ""

    def drop(self, row: dict, reason: str, detail: str) -> None:
        self.quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": f"clean:{self.step}",
                                "reason": reason, "detail": detail})

    def run(self, step) -> None:
        self.step = step.step
        before, dropped_before = len(self.rows), len(self.quarantine)
        modified = getattr(self, step.step)(step) or 0
        removed = Counter(q["reason"] for q in self.quarantine[dropped_before:])
        self.steps.append({"step": step.step, "rows_in": before, "rows_out": len(self.rows),
                           "removed": dict(removed), "modified": modified})

    def _map(self, fn: Callable[[str], str]) -> int:
        self.rows = [rewrite(r, fn) for r in self.rows]
        return sum(r.pop("_changed") for r in self.rows)

    def _filter(self, verdict: Callable[[dict], tuple[str, str] | None]) -> None:
        kept = []
        for row in self.rows:
            problem = verdict(row)
            if problem:
                self.drop(row, *problem)
            else:
                kept.append(row)
        self.rows = kept

    def _rewrite_and_drop_emptied(self, fn: Callable[[str], str], reason: str, detail: str) -> int:
        """Apply `fn` (whitespace collapsed after it) to every text; a row left with an empty text goes."""
        modified = self._map(lambda t: re.sub(r"\s+", " ", fn(t)).strip())
        self._filter(lambda r: (reason, detail) if any(not t for t in row_texts(r)) else None)
        return modified

    def normalize(self, cfg) -> int:
        return self._rewrite_and_drop_emptied(lambda t: unicodedata.normalize(cfg.form, t), "empty_after_normalization",
                                              "a message is empty once whitespace is normalized")

    def strip_html(self, cfg) -> int:
        return self._rewrite_and_drop_emptied(strip_html, "empty_after_html_strip", "nothing but markup")

    def length(self, cfg) -> None:
        if cfg.counts_tokens() and self.count_tokens is None:
            raise ValueError("the length step has token limits but no tokenizer was given to count with")

        def verdict(row):
            chars = sum(len(t) for t in row_texts(row))
            if chars < cfg.min_chars:
                return "too_short", f"{chars} characters < min_chars {cfg.min_chars}"
            if chars > cfg.max_chars:
                return "too_long", f"{chars} characters > max_chars {cfg.max_chars}"
            if not cfg.counts_tokens():
                return None
            tokens = sum(self.count_tokens(t) for t in row_texts(row))
            if cfg.min_tokens is not None and tokens < cfg.min_tokens:
                return "too_few_tokens", f"{tokens} tokens < min_tokens {cfg.min_tokens}"
            if cfg.max_tokens is not None and tokens > cfg.max_tokens:
                return "too_many_tokens", f"{tokens} tokens > max_tokens {cfg.max_tokens}"
            return None
        self._filter(verdict)

    def repetition(self, cfg) -> None:
        def verdict(row):
            text = " ".join(row_texts(row, with_system=False))
            if len(text.split()) < cfg.min_words:
                return None
            fraction = repeated_fraction(text, cfg.ngram)
            if fraction > cfg.max_duplicate_fraction:
                return "repetitive", f"{fraction:.0%} of characters in repeated {cfg.ngram}-grams " \
                                     f"> {cfg.max_duplicate_fraction:.0%}"
            return None
        self._filter(verdict)

    def pii(self, cfg) -> int:
        return self._map(lambda t: scrub_pii(t, cfg.kinds, self.pii_counts))

    def blocklist(self, cfg) -> None:
        if not cfg.words:
            return
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, cfg.words)) + r")\b", re.I)

        def verdict(row):
            hit = next((m.group() for t in row_texts(row) if (m := pattern.search(t))), None)
            return ("blocklisted", f"contains {hit!r}") if hit else None
        self._filter(verdict)

    def exact_dedup(self, cfg) -> None:
        keys = [f"{r['kind']}:{current_hash(r)}" for r in self.rows]
        removed = set()
        for first, dup in exact_duplicates(keys):
            removed.add(dup)
            self.drop(self.rows[dup], "exact_duplicate",
                      f"same normalized content as {self.rows[first]['row_id']}")
            self.cluster("exact", self.rows[first], self.rows[dup], 1.0)
        self.rows = [r for i, r in enumerate(self.rows) if i not in removed]

    def near_dedup(self, cfg) -> None:
        removed = set()
        bands_rows = (cfg.bands, cfg.rows) if cfg.bands else None
        for kind in ("sft", "preference", "kto"):
            idx = [i for i, r in enumerate(self.rows) if r["kind"] == kind]
            texts = [dedup_text(self.rows[i]) for i in idx]
            for a, b, jaccard in near_duplicate_clusters(texts, cfg.threshold, cfg.num_perm, cfg.shingle_size,
                                                         bands_rows):
                kept, dup = self.rows[idx[a]], self.rows[idx[b]]
                removed.add(idx[b])
                self.drop(dup, "near_duplicate", f"~{jaccard:.2f} Jaccard with {kept['row_id']}")
                self.cluster("near", kept, dup, jaccard)
        self.rows = [r for i, r in enumerate(self.rows) if i not in removed]

    def cluster(self, kind: str, kept: dict, removed: dict, similarity: float) -> None:
        self.clusters.append({"cluster_id": f"{kind}:{kept['row_id']}", "kind": kind, "kept_row_id": kept["row_id"],
                              "removed_row_id": removed["row_id"], "similarity": round(similarity, 3)})


def clean(rows: list[dict], cfg: CleanSection, source_order: list[str],
          count_tokens: Callable[[str], int] | None = None) -> tuple[list[dict], list[dict], list[dict], dict]:
    """(kept rows, quarantined rows, duplicate clusters, report). Input rows are ingest's normalized rows.

    `count_tokens` (text -> token count) is needed when a length step sets token limits.
    """
    priority = {name: i for i, name in enumerate(source_order)}
    ordered = sorted(rows, key=lambda r: (priority.get(r["source"], len(priority)), *row_position(r["row_id"])))
    cleaner = Cleaner(ordered, count_tokens)
    for step in cfg.steps:
        cleaner.run(step)
    final = [{**r, "content_hash": current_hash(r), "messages": json.dumps(r["messages"], ensure_ascii=False)}
             for r in cleaner.rows]
    report = {
        "rows_in": len(rows), "rows_out": len(final), "quarantined": len(cleaner.quarantine),
        "quarantine_by_reason": dict(Counter(q["reason"] for q in cleaner.quarantine)),
        "pii_scrubbed": dict(cleaner.pii_counts), "steps": cleaner.steps,
        "rows_in_by_source": dict(Counter(r["source"] for r in rows)),
        "rows_out_by_source": dict(Counter(r["source"] for r in final)),
        "top_quarantine_details": Counter(re.sub(r"\S+:\d+\b", "<row>", q["detail"])
                                          for q in cleaner.quarantine).most_common(5),
    }
    return final, cleaner.quarantine, cleaner.clusters, report


def token_counter(model_path):
    """text -> number of tokens of the base model's tokenizer, for the length step's token limits."""
    from engine.models import load_tokenizer
    tokenizer = load_tokenizer(model_path)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_clean_data(run: "StageRun") -> dict:
    """clean_data's entry point: the recipe's cleaning steps over raw_data's rows; kept rows, quarantine and
    duplicate clusters to Parquet. Returns the cleaning report. Token limits count with the recipe's local
    checkpoint's tokenizer (the tiny preset's tokenizer is trained on this stage's output)."""
    cfg = run.recipe.clean
    raw = run.inputs["raw_data"]
    source_order = list(json.loads((raw / "manifest.json").read_text())["metrics"]["by_source"])
    count_tokens = token_counter(run.recipe.model.model_name_or_path) if cfg.counts_tokens() else None
    rows, quarantine, clusters, report = clean(read_rows(raw / "rows.parquet"), cfg, source_order, count_tokens)
    write_rows(rows, run.out / "rows.parquet", ROW_COLUMNS)
    write_rows(quarantine, run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
    write_rows(clusters, run.out / "clusters.parquet", CLUSTER_COLUMNS)
    return report
