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
from typing import TYPE_CHECKING, Callable, Iterator

from engine.data.dedup import exact_duplicates, near_duplicate_clusters
from engine.data.ingest import content_hash
from engine.tables import CLUSTER_COLUMNS, QUARANTINE_COLUMNS, REWRITE_COLUMNS, ROW_COLUMNS, read_rows, write_rows

if TYPE_CHECKING:
    from engine.recipe import CleanSection
    from engine.stage import StageRun

TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
TOOL_CALL_ROLES = ("function_call",)  # a tool call's JSON is passed to a tool: no rewriting step touches it

# --- where text is prose: code spans and fences are never rewritten by strip_html or PII (but secrets)

CODE = re.compile(r"(?ms)^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*(?P=fence)[ \t]*$|\Z)"  # fenced block
                  r"|(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`)", re.S)  # inline code span


def segments(text: str) -> list[tuple[str, bool]]:
    """`text` as (piece, is_code) pieces in order: Markdown code fences and backtick code spans are code."""
    pieces, at = [], 0
    for match in CODE.finditer(text):
        if match.start() > at:
            pieces.append((text[at:match.start()], False))
        pieces.append((match.group(), True))
        at = match.end()
    if at < len(text):
        pieces.append((text[at:], False))
    return pieces


def on_prose(text: str, fn: Callable[[str], str]) -> str:
    """`fn` applied to the prose pieces of `text` only; code comes back byte-identical."""
    return "".join(piece if is_code else fn(piece) for piece, is_code in segments(text))


# --- PII: each kind is found with care for meaning (Luhn and a format or label for cards, phonenumbers for
# phones), never inside code, arithmetic or tool calls, and replaced by a typed placeholder such as <EMAIL>

SECRET_KEYS = re.compile(r"(?<![A-Za-z0-9_-])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}"
                         r"|gh[pousr]_[A-Za-z0-9]{36}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])")
SECRET_ASSIGNMENT = re.compile(r"(?i)\b(?:password|passwd|api[_-]?key|secret|token)\s*(?P<sep>[:=])\s*[\"']?"
                               r"(?P<value>[^\s\"',;]{5,}[^\s\"',;.])")  # a sentence's final period is not the secret's
URL_PASSWORD = re.compile(r"(?<=://)[^\s/?#@:]+:(?P<value>[^\s/?#@]+)@")  # scheme://user:password@host
URL_AUTHORITY_BEFORE = re.compile(r"://[^\s/?#@]*$")  # text ending inside a URL's user:password@ part
EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d.,-])(?:(?P<grouped>\d{4}(?P<sep>[ -])\d{4}(?P=sep)\d{4}(?P=sep)\d{4}(?:(?P=sep)\d{3})?"
                  r"|\d{4}(?P<amex>[ -])\d{6}(?P=amex)\d{5})|(?P<plain>\d{13,19}))(?![\d]|[.,-]\d)")
CARD_LABEL = re.compile(r"(?i)\b(?:card|credit|debit|visa|master\s?card|amex|american express|discover|cc)\b")
IP = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])")
VERSION_BEFORE = re.compile(r"(?i)(?:\bv|version\s*|release\s*)$")
OPERATOR = set("+-*/=×÷^%<>")
PLACEHOLDER = re.compile(r"<[A-Z_]+>")


def luhn_valid(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def inside_number(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is a piece of a longer number (3.14159265358, 1,234,567, 12345-6789)."""
    before, after = text[max(0, start - 2):start], text[end:end + 2]
    return (before[-1:].isdigit() or (len(before) == 2 and before[1] in ".,-" and before[0].isdigit())
            or after[:1].isdigit() or (len(after) == 2 and after[0] in ".,-" and after[1].isdigit()))


def in_arithmetic(text: str, start: int, end: int) -> bool:
    """True when the number at text[start:end] is an operand: an operator joins it to another number
    (`1234 5678 + 1`, `(2) * 4111...`), or it is assigned (`x = 4111...`)."""
    before, after = text[:start].rstrip(), text[end:].lstrip()
    if before.endswith("=") or after.startswith("=") or re.search(r"=\s*[-+]$", before):  # signed: `i = -223905 / 3245`
        return True
    if before[-1:] in OPERATOR:
        operand = before[:-1].rstrip()[-1:]
        if operand and (operand.isdigit() or operand == ")"):
            return True
    if after[:1] in OPERATOR:
        operand = after[1:].lstrip()[:1]
        if operand and (operand.isdigit() or operand in "(-"):
            return True
    return False


class PiiScrubber:
    """Replaces personal data in prose with placeholders; counts what it replaced per kind."""

    def __init__(self, kinds: list[str], region: str, counts: Counter):
        self.kinds, self.region, self.counts = set(kinds), region, counts

    def scrub(self, text: str) -> str:
        if "secret" in self.kinds:  # a real key is a leak wherever it stands, code included
            text = self._sub(SECRET_KEYS, text, "secret")
        return on_prose(text, self.scrub_prose)

    def scrub_prose(self, text: str) -> str:
        if "secret" in self.kinds:
            text = self._sub(SECRET_ASSIGNMENT, text, "secret", group="value", keep=self._a_word_not_a_secret)
            text = self._sub(URL_PASSWORD, text, "secret", group="value")
        if "email" in self.kinds:  # a URL's user@host or user:password@host is a login, not an address
            text = self._sub(EMAIL, text, "email", keep=lambda t, m: bool(URL_AUTHORITY_BEFORE.search(t[:m.start()])))
        if "credit_card" in self.kinds:
            text = self._sub(CARD, text, "credit_card", keep=self._not_a_card)
        if "ip" in self.kinds:
            text = self._sub(IP, text, "ip", keep=lambda t, m: bool(VERSION_BEFORE.search(t[:m.start()])))
        if "phone" in self.kinds:
            text = self._phones(text)
        return text

    def _sub(self, pattern: re.Pattern, text: str, kind: str, group: int | str = 0,
             keep: Callable[[str, re.Match], bool] | None = None) -> str:
        out, at = [], 0
        for match in pattern.finditer(text):
            if keep and keep(text, match):
                continue
            start, end = match.span(group)
            if PLACEHOLDER.fullmatch(text[start:end]):
                continue
            out += [text[at:start], f"<{kind.upper()}>"]
            at = end
            self.counts[kind] += 1
        return "".join(out) + text[at:] if out else text

    @staticmethod
    def _a_word_not_a_secret(text: str, match: re.Match) -> bool:
        """`The secret: remember...` is prose: after a colon, a plain lowercase word is not a secret value."""
        return match["sep"] == ":" and match["value"].isalpha() and match["value"].islower()

    @staticmethod
    def _not_a_card(text: str, match: re.Match) -> bool:
        if not luhn_valid(re.sub(r"\D", "", match.group())) or in_arithmetic(text, *match.span()) \
                or inside_number(text, *match.span()):
            return True
        if match.group("grouped") or match.group("amex") is not None:
            return False
        return not CARD_LABEL.search(text[max(0, match.start() - 40):match.start()])  # a bare number needs a label

    def _phones(self, text: str) -> str:
        import phonenumbers  # only the pii step needs it
        out, at = [], 0
        for match in phonenumbers.PhoneNumberMatcher(text, self.region, leniency=phonenumbers.Leniency.VALID):
            if match.start < at or in_arithmetic(text, match.start, match.end) \
                    or inside_number(text, match.start, match.end):
                continue
            out += [text[at:match.start], "<PHONE>"]
            at = match.end
            self.counts["phone"] += 1
        return "".join(out) + text[at:] if out else text


def scrub_pii(text: str, kinds: list[str], counts: Counter, region: str = "US") -> str:
    """Replace each kind of personal data or secret in `text` with a typed placeholder such as <EMAIL>."""
    return PiiScrubber(kinds, region, counts).scrub(text)


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


TEXT_FIELDS = ("chosen", "rejected")


def rewrite(row: dict, fn: Callable[[str], str], skip_roles: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, str, str]]]:
    """The row with `fn` applied to every text (but messages whose role is in `skip_roles`), and
    (field, before, after) for each text it changed, e.g. ("messages[2].content", old, new)."""
    changes, messages = [], []
    for i, message in enumerate(row["messages"]):
        new = message["content"] if message["role"] in skip_roles else fn(message["content"])
        if new != message["content"]:
            changes.append((f"messages[{i}].content", message["content"], new))
            message = {**message, "content": new}
        messages.append(message)
    out = {**row, "messages": messages}
    for name in TEXT_FIELDS:
        if row[name]:
            out[name] = fn(row[name])
            if out[name] != row[name]:
                changes.append((name, row[name], out[name]))
    return (out, changes) if changes else (row, [])


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


def current_hash(row: dict) -> str:
    return content_hash(row["messages"], row["chosen"], row["rejected"], row.get("tools"), row.get("label"))


def whitespace_blind_hash(row: dict) -> str:
    squeeze = lambda text: " ".join(text.split()) if text else text  # noqa: E731
    messages = [{**m, "content": squeeze(m["content"])} for m in row["messages"]]
    return content_hash(messages, squeeze(row["chosen"]), squeeze(row["rejected"]), row.get("tools"), row.get("label"))


class Cleaner:
    """Runs the steps over rows, collecting quarantine, rewrites, duplicate clusters and a per-step report."""

    def __init__(self, rows: list[dict], count_tokens: Callable[[str], int] | None = None):
        self.rows = [{**r, "messages": json.loads(r["messages"])} for r in rows]
        self.count_tokens = count_tokens
        self.quarantine: list[dict] = []
        self.rewrites: list[dict] = []
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

    def _map(self, fn: Callable[[str], str], skip_roles: tuple[str, ...] = ()) -> int:
        """Rewrite every row's texts with `fn`; record each changed text; return how many rows changed."""
        modified, rows = 0, []
        for row in self.rows:
            new, changes = rewrite(row, fn, skip_roles)
            rows.append(new)
            modified += bool(changes)
            for where, before, after in changes:
                short_before, short_after = excerpt_pair(before, after)
                self.rewrites.append({"source": row["source"], "row_id": row["row_id"], "step": self.step,
                                      "field": where, "before": short_before, "after": short_after})
        self.rows = rows
        return modified

    def _filter(self, verdict: Callable[[dict], tuple[str, str] | None]) -> None:
        kept = []
        for row in self.rows:
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
        """Each message (and answer) is judged on its own: a row goes when one of its texts is repetitive."""
        def verdict(row):
            fields = [(f"messages[{i}]", m["content"]) for i, m in enumerate(row["messages"]) if m["role"] != "system"]
            fields += [(name, row[name]) for name in TEXT_FIELDS if row[name]]
            for where, text in fields:
                if len(text.split()) < cfg.min_words:
                    continue
                fraction = repeated_fraction(text, cfg.ngram)
                if fraction > cfg.max_duplicate_fraction:
                    return "repetitive", f"{where}: {fraction:.0%} of characters in repeated {cfg.ngram}-grams " \
                                         f"> {cfg.max_duplicate_fraction:.0%}"
            return None
        self._filter(verdict)

    def pii(self, cfg) -> int:
        """Tool calls (function_call turns) keep their arguments: they are JSON a tool must receive unchanged."""
        scrubber = PiiScrubber(cfg.kinds, cfg.phone_region, self.pii_counts)
        return self._map(scrubber.scrub, skip_roles=TOOL_CALL_ROLES)

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
        key_of = whitespace_blind_hash if cfg.ignore_whitespace else current_hash
        keys = [f"{r['kind']}:{key_of(r)}" for r in self.rows]
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


def clean(rows: list[dict], cfg: CleanSection, source_order: list[str],
          count_tokens: Callable[[str], int] | None = None) -> CleanResult:
    """Run the recipe's clean steps over ingest's normalized rows: a CleanResult (rows, quarantine, clusters,
    report, rewrites); see CleanResult for each field's shape.

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
        "rewritten": len(cleaner.rewrites), "rewritten_by_step": dict(Counter(r["step"] for r in cleaner.rewrites)),
        # every selected source, an empty one too (0 in): the per-source checks and reports list it
        "rows_in_by_source": {s: 0 for s in source_order} | dict(Counter(r["source"] for r in rows)),
        "rows_out_by_source": {s: 0 for s in source_order} | dict(Counter(r["source"] for r in final)),
        "top_quarantine_details": Counter(re.sub(r"\S+:\d+\b", "<row>", q["detail"])
                                          for q in cleaner.quarantine).most_common(5),
    }
    return CleanResult(final, cleaner.quarantine, cleaner.clusters, report, cleaner.rewrites)


def token_counter(model_path):
    """text -> number of tokens of the base model's tokenizer, for the length step's token limits."""
    from transformers import AutoTokenizer
    from engine.models import hf_source
    folder, source = hf_source(model_path)  # a GGUF file's tokenizer is read from the file itself
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **source)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_clean_data(run: "StageRun") -> dict:
    """clean_data's entry point: the recipe's cleaning steps over raw_data's rows; kept rows, quarantine, duplicate
    clusters and every rewritten text to Parquet. Returns the cleaning report. Token limits count with the recipe's
    local checkpoint's tokenizer (the tiny preset's tokenizer is trained on this stage's output)."""
    cfg = run.recipe.clean
    raw = run.inputs["raw_data"]
    source_order = list(json.loads((raw / "manifest.json").read_text())["metrics"]["by_source"])
    count_tokens = token_counter(run.recipe.model.model_name_or_path) if cfg.counts_tokens() else None
    result = clean(read_rows(raw / "rows.parquet"), cfg, source_order, count_tokens)
    write_rows(result.rows, run.out / "rows.parquet", ROW_COLUMNS)
    write_rows(result.quarantine, run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
    write_rows(result.clusters, run.out / "clusters.parquet", CLUSTER_COLUMNS)
    write_rows(result.rewrites, run.out / "rewrites.parquet", REWRITE_COLUMNS)
    return result.report
