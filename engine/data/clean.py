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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from engine.runtime.pool import OrderedPool, pool_state
from engine.runtime.progress import Progress
from engine.data.dedup import exact_duplicates, near_duplicate_clusters
from engine.data.ingest import content_hash
from engine.data.pii import JSON_ROLES, Inconsistent, RowScrubber
from engine.data.prose import on_prose, prose_lines, repeated_lines

if TYPE_CHECKING:
    from engine.recipe import CleanSection

TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
TOOL_CALL_ROLES = ("function_call",)  # a tool call's JSON is passed to a tool: normalize and strip_html skip it


# --- strip_html (opt-in): only well-formed, real HTML elements go

HTML_ELEMENTS = frozenset("""a abbr address article aside audio b bdi bdo blockquote body br button caption cite code col
colgroup dd del details dfn dialog div dl dt em fieldset figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header
hr html i iframe img input ins kbd label legend li link main mark meta nav noscript ol optgroup option p picture pre q
s samp script section select small source span strong style sub summary sup table tbody td textarea tfoot th thead
time title tr track u ul var video wbr center big tt strike""".split())
VOID_ELEMENTS = frozenset("area base br col embed hr img input link meta source track wbr".split())
INLINE_TAGS = frozenset("a abbr b bdi bdo big cite code del dfn em font i ins kbd mark q s samp small span strike "
                        "strong sub sup time tt u var".split())
DROP_CONTENT = frozenset({"script", "style"})  # their content is not text
HTML_TAG = re.compile(r"<(?P<close>/?)(?P<name>[a-z][a-z0-9]*)(?P<attrs>(?:\s+[a-zA-Z_:][-\w:.]*"
                      r"(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+))?)*)\s*(?P<self>/?)>")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)


def strip_html(text: str) -> str:
    """Remove well-formed HTML from prose: lowercase tags of real HTML elements that are void or closed by their
    matching end tag, and comments. `<noinput>`, `List<String>`, JSX `<Button>`, `<placeholder>`, a lone `<b>`
    and anything inside code spans and fences stay. Inline tags vanish; block tags leave a space where they
    split words (a newline for <br>). Entities are decoded only in prose that held markup."""
    return on_prose(text, _strip_prose)


def _strip_prose(text: str) -> str:
    tags = list(HTML_TAG.finditer(text))
    remove: dict[int, re.Match] = {}  # start -> tag to remove
    stack: list[re.Match] = []
    for tag in tags:
        name = tag["name"]
        if name not in HTML_ELEMENTS:
            continue
        if tag["close"]:
            for depth in range(len(stack) - 1, -1, -1):
                if stack[depth]["name"] == name:
                    remove[stack[depth].start()] = stack[depth]
                    remove[tag.start()] = tag
                    del stack[depth:]
                    break
        elif name in VOID_ELEMENTS or tag["self"]:
            if name in VOID_ELEMENTS:
                remove[tag.start()] = tag
        else:
            stack.append(tag)
    comments = list(HTML_COMMENT.finditer(text))
    if not remove and not comments:
        return text
    out, at, skip_until = [], 0, None
    spans = sorted([(m.start(), m.end(), m) for m in remove.values()] + [(m.start(), m.end(), None) for m in comments])
    for start, end, tag in spans:
        if start < at:
            continue
        if skip_until is None:
            out.append(text[at:start])
        if tag is not None and tag["name"] in DROP_CONTENT:
            skip_until = None if tag["close"] else tag["name"]
        elif skip_until is None:
            out.append(_tag_gap(text, start, end, tag))
        at = end
    out.append(text[at:])
    return html.unescape("".join(out))


def _tag_gap(text: str, start: int, end: int, tag: re.Match | None) -> str:
    if tag is None or tag["name"] in INLINE_TAGS:
        return ""
    if tag["name"] == "br":
        return "\n"
    before, after = text[start - 1:start], text[end:end + 1]
    return "" if not before or not after or before.isspace() or after.isspace() or after == "<" else " "


def repeated_fraction(text: str, n: int) -> float:
    """The share of characters (in words) that repeat an earlier word n-gram: every occurrence of an n-gram after
    its first. Gopher's filter counts the first occurrence too, which makes an answer quoting its passage once look
    half repeated; here one quote is one copy, and a text over 0.5 is mostly copies of itself: a loop."""
    words = text.split()
    seen, covered = set(), set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            covered.update(range(i, i + n))
        seen.add(gram)
    total = sum(len(w) for w in words)
    return sum(len(words[i]) for i in covered) / total if total else 0.0


def row_texts(row: dict, with_system: bool = True) -> list[str]:
    turns = [m["content"] for m in row["messages"] if with_system or m["role"] != "system"]
    return turns + [t for t in (row["chosen"], row["rejected"]) if t]


def dedup_text(row: dict) -> str:
    """The text near-duplicates are judged on (near_dedup and decontamination alike): every turn but the system
    prompt, which is boilerplate shared by design and would make distinct short rows look alike."""
    return "\n".join(row_texts(row, with_system=False))


TEXT_FIELDS = ("chosen", "rejected")


def judged_texts(row: dict) -> list[tuple[str, str]]:
    """(field, text) the repetition filter judges: requests and the answers a model learns to give; not the system
    prompt (boilerplate by design), tool JSON, a rejected answer or a KTO answer labelled undesirable."""
    last = len(row["messages"]) - 1
    texts = [(f"messages[{i}]", m["content"]) for i, m in enumerate(row["messages"])
             if m["role"] in ("user", "assistant") and not (row.get("label") == "false" and i == last)]
    return texts + ([("chosen", row["chosen"])] if row["chosen"] else [])


def rewrite(row: dict, fn: Callable[[str], str], skip_roles: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, str, str]]]:
    """The row with `fn` applied to every text (but the tools schema and messages whose role is in `skip_roles`),
    and (field, before, after) for each text it changed, e.g. ("messages[2].content", old, new)."""
    skipped = {f"messages[{i}].content" for i, m in enumerate(row["messages"]) if m["role"] in skip_roles}
    fields = text_fields(row)
    return with_changes(row, fields, {name: text if name in skipped or name == "tools" else fn(text)
                                      for name, text in fields.items()})


def with_changes(row: dict, fields: dict[str, str], new: dict[str, str]) -> tuple[dict, list[tuple[str, str, str]]]:
    """The row with its texts `fields` replaced by `new`, and (field, before, after) for each that changed; the row
    itself where none did."""
    changes = [(name, fields[name], new[name]) for name in fields if new[name] != fields[name]]
    return (with_fields(row, new), changes) if changes else (row, [])


def text_fields(row: dict) -> dict[str, str]:
    """Every text of a row by the name the rewrites table gives it: messages[i].content, chosen, rejected, tools."""
    fields = {f"messages[{i}].content": m["content"] for i, m in enumerate(row["messages"])}
    return fields | {name: row[name] for name in (*TEXT_FIELDS, "tools") if row.get(name)}


def with_fields(row: dict, fields: dict[str, str]) -> dict:
    messages = [{**m, "content": fields[f"messages[{i}].content"]} for i, m in enumerate(row["messages"])]
    return {**row, "messages": messages, **{name: fields[name] for name in (*TEXT_FIELDS, "tools") if name in fields}}


def json_fields(row: dict) -> set[str]:
    """The texts that are JSON: tool calls, tool results and the tools schema."""
    names = {f"messages[{i}].content" for i, m in enumerate(row["messages"]) if m["role"] in JSON_ROLES}
    return names | ({"tools"} if row.get("tools") else set())


def excerpt_pair(before: str, after: str, width: int = 80) -> tuple[str, str]:
    """About `width` characters of each text around their first difference, with … where cut."""
    first = next((i for i, (x, y) in enumerate(zip(before, after)) if x != y), min(len(before), len(after)))
    start = max(0, first - width // 4)

    def cut(text: str) -> str:
        piece = text[start:start + width]
        return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")
    return cut(before), cut(after)


def row_position(row_id: str) -> tuple[str, int]:
    """`source[:file]:index` -> (source[:file], index), so rows sort in file order, then numerically."""
    head, index = row_id.rsplit(":", 1)
    return head, int(index)


def corpus_order(source_order: list[str]) -> Callable[[dict], tuple[int, str, int]]:
    """A row's sort key in the ordered corpus: (source priority, source[:file], row index)."""
    priority = {name: i for i, name in enumerate(source_order)}
    return lambda row: (priority.get(row["source"], len(priority)), *row_position(row["row_id"]))


def current_hash(row: dict) -> str:
    return content_hash(row["messages"], row["chosen"], row["rejected"], row.get("tools"), row.get("label"))


def whitespace_blind_hash(row: dict) -> str:
    squeeze = lambda text: " ".join(text.split()) if text else text  # noqa: E731
    messages = [{**m, "content": squeeze(m["content"])} for m in row["messages"]]
    return content_hash(messages, squeeze(row["chosen"]), squeeze(row["rejected"]), row.get("tools"), row.get("label"))


class Cleaner:
    """Runs the steps over rows, collecting quarantine, rewrites, duplicate clusters and a per-step report."""

    def __init__(self, rows: list[dict], count_tokens: Callable[[str], int] | None = None,
                 memory_gb: float | None = None, spill_dir: Path | None = None, first_step: int = 0):
        self.rows = rows  # parsed rows (`messages` a list), each with its POSITION in the ordered corpus
        self.step_number = first_step - 1  # the recipe's index of the step running: quarantine and rewrites sort by it
        self.count_tokens = count_tokens
        self.memory_gb, self.spill_dir = memory_gb, spill_dir  # dedup's bound, and where it spills beyond it
        self.quarantine: list[dict] = []
        self.rewrites: list[dict] = []
        self.clusters: list[dict] = []
        self.pii_counts: Counter = Counter()
        self.steps: list[dict] = []
        self.step = ""

    def drop(self, row: dict, reason: str, detail: str) -> None:
        self.quarantine.append(quarantine_record(row, self.step, self.step_number, reason, detail))

    def run(self, step) -> None:
        self.step, self.step_number = step.step, self.step_number + 1
        before, dropped_before = len(self.rows), len(self.quarantine)
        modified = getattr(self, step.step)(step) or 0
        removed = Counter(q["reason"] for q in self.quarantine[dropped_before:])
        self.steps.append({"step": step.step, "rows_in": before, "rows_out": len(self.rows),
                           "removed": dict(removed), "modified": modified})

    def _map(self, fn: Callable[[str], str], skip_roles: tuple[str, ...] = ()) -> int:
        """Rewrite every row's texts with `fn`; record each changed text; return how many rows changed."""
        modified, rows = 0, []
        for row in Progress(self.step, total=len(self.rows), stage="clean_data").each(self.rows):
            new, changes = rewrite(row, fn, skip_roles)
            rows.append(new)
            modified += bool(changes)
            self._record(row, changes)
        self.rows = rows
        return modified

    def _record(self, row: dict, changes: list[tuple[str, str, str]]) -> None:
        for where, before, after in changes:
            short_before, short_after = excerpt_pair(before, after)
            self.rewrites.append({"source": row["source"], "row_id": row["row_id"], "step": self.step,
                                  "field": where, "before": short_before, "after": short_after,
                                  ORDER: (self.step_number, row[POSITION])})

    def _filter(self, verdict: Callable[[dict], tuple[str, str] | None]) -> None:
        kept = []
        for row in Progress(self.step, total=len(self.rows), stage="clean_data").each(self.rows):
            problem = verdict(row)
            if problem:
                self.drop(row, *problem)
            else:
                kept.append(row)
        self.rows = kept

    def _drop_emptied(self, reason: str, detail: str) -> None:
        self._filter(lambda r: (reason, detail) if any(not t.strip() for t in row_texts(r)) else None)

    def normalize(self, cfg) -> int:
        """Unicode form (NFC by default), CRLF and CR to LF, trailing spaces per line only when asked.
        Indentation, blank lines and inner spacing stay, tool calls are left as they are; a text left with
        nothing but whitespace drops its row."""
        def fn(text: str) -> str:
            text = unicodedata.normalize(cfg.form, text.replace("\r\n", "\n").replace("\r", "\n"))
            return TRAILING_SPACE.sub("", text) if cfg.strip_trailing_spaces else text
        modified = self._map(fn, skip_roles=TOOL_CALL_ROLES)
        self._drop_emptied("empty_after_normalization", "a text is empty or only whitespace")
        return modified

    def strip_html(self, cfg) -> int:
        modified = self._map(strip_html, skip_roles=TOOL_CALL_ROLES)
        self._drop_emptied("empty_after_html_strip", "nothing but markup")
        return modified

    def length(self, cfg) -> None:
        if cfg.counts_tokens() and self.count_tokens is None:
            raise ValueError("the length step has token limits but no tokenizer was given to count with")

        def verdict(row):
            chars = sum(len(t) for t in row_texts(row))
            if chars < cfg.min_chars:
                return "too_short", f"{chars} characters < min_chars {cfg.min_chars}"
            if cfg.max_chars is not None and chars > cfg.max_chars:
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
        """Each text a model learns to write or reads as a request is judged on its own, on its prose only: code,
        list items, formulas and tool JSON never, and a line that recurs (a chorus) is judged once, unless it
        recurs more than max_line_repeats times. A rejected answer, or a KTO answer labelled undesirable, is not
        judged: a bad answer is what it is there for."""
        def verdict(row):
            for where, text in judged_texts(row):
                line, times = repeated_lines(text, cfg.ngram)
                if times > cfg.max_line_repeats:
                    return "repetitive", f"{where}: a line recurs {times} times > max_line_repeats " \
                                         f"{cfg.max_line_repeats} ({line[:40]!r})"
                prose = "\n".join(dict.fromkeys(prose_lines(text)))
                if len(prose.split()) < cfg.min_words:
                    continue
                fraction = repeated_fraction(prose, cfg.ngram)
                if fraction > cfg.max_duplicate_fraction:
                    return "repetitive", f"{where}: {fraction:.0%} of prose characters repeat an earlier " \
                                         f"{cfg.ngram}-gram > {cfg.max_duplicate_fraction:.0%}"
            return None
        self._filter(verdict)

    def pii(self, cfg) -> int:
        """Each row on its own: a value found in any of its texts gets the same placeholder in all of them (tool
        calls, tool results and the tools schema included), or the row goes to quarantine as pii_inconsistent."""
        scrubber = RowScrubber(cfg.kinds, cfg.phone_region)
        modified, rows = 0, []
        for row in self.rows:
            fields = text_fields(row)
            try:
                new, counts = scrubber.scrub(fields, json_fields(row))
            except Inconsistent as problem:
                self.drop(row, "pii_inconsistent", str(problem))
                continue
            row, changes = with_changes(row, fields, new)
            self.pii_counts.update(counts)
            self._record(row, changes)
            modified += bool(changes)
            rows.append(row)
        self.rows = rows
        return modified

    def blocklist(self, cfg) -> None:
        if not cfg.words:
            return
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, cfg.words)) + r")\b", re.I)

        def verdict(row):
            hit = next((m.group() for t in row_texts(row) if (m := pattern.search(t))), None)
            return ("blocklisted", f"contains {hit!r}") if hit else None
        self._filter(verdict)

    def exact_dedup(self, cfg) -> None:
        """Rows with the same content go but the first; with `ignore_whitespace` (default) the comparison
        (only the comparison: no text is changed) treats runs of whitespace as one space and ignores it at the ends."""
        keys = [exact_key(r, cfg) for r in self.rows]
        removed = set()
        for first, dup in exact_duplicates(keys, self.memory_gb, self.spill_dir):
            removed.add(dup)
            self.drop(self.rows[dup], "exact_duplicate", exact_detail(self.rows[first]))
            self.cluster("exact", self.rows[first], self.rows[dup], 1.0)
        self.rows = [r for i, r in enumerate(self.rows) if i not in removed]

    def near_dedup(self, cfg) -> None:
        removed = set()
        bands_rows = (cfg.bands, cfg.rows) if cfg.bands else None
        for kind in NEAR_KINDS:
            texts_of = {i: near_text(r, kind, cfg) for i, r in enumerate(self.rows)}
            idx = [i for i, text in texts_of.items() if text is not None]
            texts = [texts_of[i] for i in idx]
            for a, b, jaccard in near_duplicate_clusters(texts, cfg.threshold, cfg.num_perm, cfg.shingle_size,
                                                         bands_rows, self.memory_gb, self.spill_dir):
                kept, dup = self.rows[idx[a]], self.rows[idx[b]]
                removed.add(idx[b])
                self.drop(dup, "near_duplicate", near_detail(kept, jaccard))
                self.cluster("near", kept, dup, jaccard)
        self.rows = [r for i, r in enumerate(self.rows) if i not in removed]

    def cluster(self, kind: str, kept: dict, removed: dict, similarity: float) -> None:
        self.clusters.append(cluster_record(kind, kept, removed, similarity))


NEAR_KINDS = ("sft", "preference", "kto")  # near_dedup compares rows within each kind


def quarantine_record(row: dict, step: str, step_number: int, reason: str, detail: str) -> dict:
    return {"source": row["source"], "row_id": row["row_id"], "stage": f"clean:{step}", "reason": reason,
            "detail": detail, ORDER: (step_number, row[POSITION])}


def cluster_record(kind: str, kept: dict, removed: dict, similarity: float) -> dict:
    return {"cluster_id": f"{kind}:{kept['row_id']}", "kind": kind, "kept_row_id": kept["row_id"],
            "removed_row_id": removed["row_id"], "similarity": round(similarity, 3)}


def exact_key(row: dict, cfg) -> str:
    """What exact_dedup compares a row on: its kind and its content hash (whitespace-blind unless told otherwise)."""
    return f"{row['kind']}:{(whitespace_blind_hash if cfg.ignore_whitespace else current_hash)(row)}"


def exact_detail(first: dict) -> str:
    return f"same normalized content as {first['row_id']}"


def near_text(row: dict, kind: str, cfg) -> str | None:
    """The text near_dedup compares `row` on among rows of `kind`; None where it is not compared (another kind, or
    shorter than min_chars: one word is a new question)."""
    if row["kind"] != kind:
        return None
    text = dedup_text(row)
    return text if len(text) >= cfg.min_chars else None


def near_detail(kept: dict, jaccard: float) -> str:
    return f"~{jaccard:.2f} Jaccard with {kept['row_id']}"


@dataclass
class CleanResult:
    """What `clean` returns.

    rows: kept rows (ingest's normalized schema, `messages` as JSON text, content_hash recomputed);
    quarantine: removed rows, QUARANTINE_COLUMNS (source, row_id, stage "clean:<step>", reason, detail);
    clusters: duplicate groups, CLUSTER_COLUMNS;
    report: rows in/out, quarantine by reason, pii_scrubbed, per step {step, rows_in, rows_out, removed, modified}, ...;
    rewrites: one record per text a step changed, REWRITE_COLUMNS: {source, row_id, step, field
      ("messages[2].content", "chosen", "rejected"), before, after} with before/after ~80-character excerpts
      around the first difference.

    Unpacking it as a 4-tuple (rows, quarantine, clusters, report) still works, for callers written before
    `rewrites` existed; new code reads the attributes.
    """
    rows: list[dict]
    quarantine: list[dict]
    clusters: list[dict]
    report: dict
    rewrites: list[dict] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.rows, self.quarantine, self.clusters, self.report))


ROW_LOCAL_STEPS = frozenset({"normalize", "strip_html", "length", "repetition", "pii", "blocklist"})
POSITION, ORDER = "_position", "_order"  # a row's index in the ordered corpus; (step number, position) of a record


def segments(steps: list) -> list[tuple[int, list]]:
    """The steps as (number of the first, steps): each run of row-local steps is one segment, which any batch of
    rows can go through alone (in a worker, on a Ray block); each dedup step is a segment of its own, over every row."""
    out: list[tuple[int, list]] = []
    for number, step in enumerate(steps):
        if out and step.step in ROW_LOCAL_STEPS and out[-1][1][-1].step in ROW_LOCAL_STEPS:
            out[-1][1].append(step)
        else:
            out.append((number, [step]))
    return out


@dataclass
class BatchOutcome:
    """What one segment of row-local steps made of one batch: the kept rows (parsed, positions kept), quarantine and
    rewrites (each with its ORDER), pii counts and the per-step report of this batch alone."""
    rows: list[dict]
    quarantine: list[dict]
    rewrites: list[dict]
    pii_counts: Counter
    steps: list[dict]


def clean_batch(rows: list[dict], steps: list, first_step: int,
                count_tokens: Callable[[str], int] | None = None) -> BatchOutcome:
    """Row-local `steps` (one segment, numbered from `first_step`) over one batch of parsed rows: any split of the
    corpus into batches, combined in order by `Combined`, gives what one pass over every row gives."""
    cleaner = Cleaner(rows, count_tokens, first_step=first_step)
    for step in steps:
        cleaner.run(step)
    return BatchOutcome(cleaner.rows, cleaner.quarantine, cleaner.rewrites, cleaner.pii_counts, cleaner.steps)


class Combined:
    """Every batch's and every dedup's records, combined as one pass over all rows would have made them: per-step
    counts summed (reasons in order of first appearance), quarantine and rewrites in (step, position) order."""

    def __init__(self):
        self.quarantine: list[dict] = []
        self.rewrites: list[dict] = []
        self.clusters: list[dict] = []
        self.pii_counts: Counter = Counter()
        self.steps: dict[int, dict] = {}

    def add(self, outcome: BatchOutcome, first_step: int) -> None:
        self.quarantine += outcome.quarantine
        self.rewrites += outcome.rewrites
        self.pii_counts.update(outcome.pii_counts)
        for number, step in enumerate(outcome.steps, first_step):
            total = self.steps.setdefault(number, {"step": step["step"], "rows_in": 0, "rows_out": 0,
                                                   "removed": Counter(), "modified": 0})
            total["rows_in"] += step["rows_in"]
            total["rows_out"] += step["rows_out"]
            total["removed"].update(step["removed"])
            total["modified"] += step["modified"]

    def add_dedup(self, cleaner: "Cleaner", number: int) -> None:
        self.add(BatchOutcome([], cleaner.quarantine, [], Counter(), cleaner.steps), number)
        self.clusters += cleaner.clusters

    def report_steps(self) -> list[dict]:
        return [{**step, "removed": dict(step["removed"])} for _, step in sorted(self.steps.items())]

    def result(self, final: list[dict], rows_in_by_source: Counter, source_order: list[str],
               rows_out_by_source: Counter | None = None) -> "CleanResult":
        """The CleanResult of the kept rows `final` (as stored) and everything recorded, with its report;
        `rows_out_by_source`: the kept rows' counts where they went to a table instead of `final`."""
        quarantine, rewrites = self.in_order(self.quarantine), self.in_order(self.rewrites)
        tally = Tally()
        tally.quarantined(quarantine)
        tally.rewritten(rewrites)
        if rows_out_by_source is None:
            tally.kept(final)
        else:
            tally.out_by_source = Counter(rows_out_by_source)
        return CleanResult(final, quarantine, self.clusters, self.report(tally, rows_in_by_source, source_order),
                           rewrites)

    def report(self, tally: "Tally", rows_in_by_source: Counter, source_order: list[str]) -> dict:
        """The cleaning report: this object's step counts and pii counts, and `tally`'s of the records in order."""
        return {
            "rows_in": sum(rows_in_by_source.values()), "rows_out": sum(tally.out_by_source.values()),
            "quarantined": sum(tally.reasons.values()), "quarantine_by_reason": dict(tally.reasons),
            "pii_scrubbed": dict(self.pii_counts), "steps": self.report_steps(),
            "rewritten": sum(tally.rewrite_steps.values()), "rewritten_by_step": dict(tally.rewrite_steps),
            # every selected source, an empty one too (0 in): the per-source checks and reports list it
            "rows_in_by_source": {s: 0 for s in source_order} | dict(rows_in_by_source),
            "rows_out_by_source": {s: 0 for s in source_order} | dict(tally.out_by_source),
            "top_quarantine_details": tally.details.most_common(5),
        }

    @staticmethod
    def in_order(records: list[dict]) -> list[dict]:
        """`records` sorted by ORDER (stable: a row's several rewrites keep their field order), ORDER dropped."""
        return [{k: v for k, v in r.items() if k != ORDER} for r in sorted(records, key=lambda r: r[ORDER])]


class Tally:
    """The report's counts of the records, fed in their final order (a Counter keeps keys in order of first
    appearance, which the report's dicts and most_common's ties show)."""

    def __init__(self):
        self.reasons, self.details, self.rewrite_steps, self.out_by_source = Counter(), Counter(), Counter(), Counter()

    def quarantined(self, records: Iterable[dict]) -> None:
        for q in records:
            self.reasons[q["reason"]] += 1
            self.details[re.sub(r"\S+:\d+\b", "<row>", q["detail"])] += 1

    def rewritten(self, records: Iterable[dict]) -> None:
        self.rewrite_steps.update(r["step"] for r in records)

    def kept(self, rows: Iterable[dict]) -> None:
        self.out_by_source.update(r["source"] for r in rows)


def _clean_in_worker(rows: list[dict], steps: list, first_step: int) -> BatchOutcome:
    return clean_batch(rows, steps, first_step, pool_state())  # the pool's state: the token counter


def parsed_rows(rows: Iterable[dict], first_position: int = 0) -> list[dict]:
    """Stored rows (`messages` as JSON text) as the steps read them, each with its position in the ordered corpus."""
    return [{**r, "messages": json.loads(r["messages"]), POSITION: i} for i, r in enumerate(rows, first_position)]


def stored_row(row: dict) -> dict:
    """A kept row as the table stores it: content_hash recomputed, `messages` as JSON text, no position."""
    return {**{k: v for k, v in row.items() if k != POSITION}, "content_hash": current_hash(row),
            "messages": json.dumps(row["messages"], ensure_ascii=False)}


def clean(rows: list[dict], cfg: CleanSection, source_order: list[str],
          count_tokens: Callable[[str], int] | None = None, memory_gb: float | None = None,
          spill_dir: Path | None = None, batch_rows: int = 10_000, workers: int = 1) -> CleanResult:
    """Run the recipe's clean steps over ingest's normalized rows: a CleanResult (rows, quarantine, clusters,
    report, rewrites); see CleanResult for each field's shape.

    `count_tokens` (text -> token count) is needed when a length step sets token limits. `memory_gb` bounds what
    exact_dedup and near_dedup hold: beyond it they spill to a temporary directory in `spill_dir` (same result).
    Row-local steps run on batches of `batch_rows`, on `workers` processes (any size and number give the same
    result).
    """
    ordered = sorted(rows, key=corpus_order(source_order))
    current = parsed_rows(ordered)
    combined = Combined()
    runs = segments(cfg.steps)
    row_local = any(steps[0].step in ROW_LOCAL_STEPS for _, steps in runs)
    workers = min(workers, -(-len(current) // batch_rows)) if row_local else 1
    with OrderedPool(workers, count_tokens) as pool:  # one for every row-local segment
        for first, steps in runs:
            if steps[0].step in ROW_LOCAL_STEPS:
                kept = []
                jobs = ((current[at:at + batch_rows], steps, first) for at in range(0, len(current), batch_rows))
                for outcome in pool.map(_clean_in_worker, jobs):
                    combined.add(outcome, first)
                    kept += outcome.rows
                current = kept
            else:
                cleaner = Cleaner(current, count_tokens, memory_gb, spill_dir, first_step=first)
                cleaner.run(steps[0])
                combined.add_dedup(cleaner, first)
                current = cleaner.rows
    return combined.result([stored_row(r) for r in current], Counter(r["source"] for r in rows), source_order)


class TokenCounter:
    """text -> number of tokens of the base model's tokenizer, for the length step's token limits. It pickles as its
    model path alone: a pool worker (or a Ray worker) loads the tokenizer once, on first use."""

    def __init__(self, model_path):
        self.model_path, self.tokenizer = model_path, None

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "tokenizer": None}

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            from transformers import AutoTokenizer
            from engine.models.load import hf_source
            folder, source = hf_source(self.model_path)  # a GGUF file's tokenizer is read from the file itself
            self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **source)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def token_counter(model_path) -> TokenCounter:
    return TokenCounter(model_path)
