"""PII: personal data and secrets become typed placeholders (<EMAIL>, <PHONE>, <IP>, <CREDIT_CARD>, <SECRET>), one
row at a time, so that a value keeps its placeholder in every text of the row: user and assistant turns, the
system prompt, preference answers, tool calls' arguments, tool results and the tools schema.

Each kind is found with care for meaning (Luhn and a format or label for cards, phonenumbers for phones, a
password that is a plain word or a ${VAR} is not a secret) in prose only: code (fenced, spans and detected
unfenced lines, engine.data.prose) is never rewritten, nor is arithmetic. A value found anywhere in the row is
replaced wherever it stands as a whole token; where it cannot be (it stands in code, or in a tool's JSON as a
number, a key's escape or a split string), the row is not rewritten but quarantined as pii_inconsistent: a
model must not learn to answer <SECRET> where its tool returned the password, nor see the address it was told
to hide in the call it makes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Callable

from engine.data.prose import on_prose, segments

SECRET_KEYS = re.compile(r"(?<![A-Za-z0-9_-])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}"
                         r"|gh[pousr]_[A-Za-z0-9]{36}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])")
SECRET_ASSIGNMENT = re.compile(r"(?i)\b(?:password|passwd|api[_-]?key|secret|token)\s*(?P<sep>[:=])\s*[\"']?"
                               r"(?P<value>[^\s\"',;]{5,}[^\s\"',;.])")  # a sentence's final period is not the secret's
SECRET_KEY_NAME = re.compile(r"(?i)(?:\w*_)?(?:password|passwd|pwd|api_?key|apikey|secret|token|access_key)")
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
# a stand-in, not a secret: a plain word or words (password, your_password), a template variable or a mask
NOT_A_SECRET = re.compile(r"[A-Za-z_-]+|[<{$%\[].*|(.)\1*")
# a found value is replaced where it stands as a whole token, not inside a longer word, address or number
BEFORE, AFTER = r"(?<![\w.])", r"(?!\w|\.\w)"
JSON_ROLES = ("function_call", "observation")  # a tool call's arguments and a tool's result are JSON


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


def a_secret(value: str) -> bool:
    return not NOT_A_SECRET.fullmatch(value) and not PLACEHOLDER.fullmatch(value)


class Finder:
    """Finds personal data and secrets in prose: (kind, value) in the order they stand."""

    def __init__(self, kinds: list[str], region: str):
        self.kinds, self.region = set(kinds), region

    def in_text(self, text: str) -> list[tuple[str, str]]:
        """What `text`'s prose holds, and real API keys wherever they stand (a key in code is a leak too)."""
        found = [("secret", m.group()) for m in SECRET_KEYS.finditer(text)] if "secret" in self.kinds else []
        for piece, is_code in segments(text):
            if not is_code:
                found += self.in_prose(piece)
        return found

    def in_prose(self, text: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if "secret" in self.kinds:
            text = self._take(SECRET_KEYS, text, "secret", found)
            text = self._take(SECRET_ASSIGNMENT, text, "secret", found, group="value",
                              keep=lambda t, m: not a_secret(m["value"]))
            text = self._take(URL_PASSWORD, text, "secret", found, group="value",
                              keep=lambda t, m: not a_secret(m["value"]))
        if "email" in self.kinds:  # a URL's user@host or user:password@host is a login, not an address
            text = self._take(EMAIL, text, "email", found,
                              keep=lambda t, m: bool(URL_AUTHORITY_BEFORE.search(t[:m.start()])))
        if "credit_card" in self.kinds:
            text = self._take(CARD, text, "credit_card", found, keep=self._not_a_card)
        if "ip" in self.kinds:
            text = self._take(IP, text, "ip", found, keep=lambda t, m: bool(VERSION_BEFORE.search(t[:m.start()])))
        if "phone" in self.kinds:
            self._phones(text, found)
        return found

    def in_json(self, value) -> list[tuple[str, str]]:
        """What a parsed JSON document's strings hold, and the string values of secret-named keys
        ({"password": "aB3#fG7!kL9@"}, {"api_key": ...})."""
        found = []
        if isinstance(value, str):
            found += self.in_text(value)
        elif isinstance(value, list):
            for item in value:
                found += self.in_json(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if ("secret" in self.kinds and isinstance(item, str) and SECRET_KEY_NAME.fullmatch(key)
                        and len(item) >= 6 and a_secret(item)):
                    found.append(("secret", item))
                found += self.in_json(item)
        return found

    @staticmethod
    def _take(pattern: re.Pattern, text: str, kind: str, found: list, group: int | str = 0,
              keep: Callable[[str, re.Match], bool] | None = None) -> str:
        """Record each match as (kind, value); return the text with the matches masked, so that later kinds do not
        find pieces of them."""
        out, at = [], 0
        for match in pattern.finditer(text):
            if keep and keep(text, match):
                continue
            start, end = match.span(group)
            if PLACEHOLDER.fullmatch(text[start:end]):
                continue
            found.append((kind, text[start:end]))
            out += [text[at:start], f"<{kind.upper()}>"]
            at = end
        return "".join(out) + text[at:] if out else text

    @staticmethod
    def _not_a_card(text: str, match: re.Match) -> bool:
        if not luhn_valid(re.sub(r"\D", "", match.group())) or in_arithmetic(text, *match.span()) \
                or inside_number(text, *match.span()):
            return True
        if match.group("grouped") or match.group("amex") is not None:
            return False
        return not CARD_LABEL.search(text[max(0, match.start() - 40):match.start()])  # a bare number needs a label

    def _phones(self, text: str, found: list) -> None:
        import phonenumbers  # only the pii step needs it
        at = 0
        for match in phonenumbers.PhoneNumberMatcher(text, self.region, leniency=phonenumbers.Leniency.VALID):
            if match.start < at or in_arithmetic(text, match.start, match.end) \
                    or inside_number(text, match.start, match.end) or PLACEHOLDER.search(match.raw_string):
                continue
            found.append(("phone", match.raw_string))
            at = match.end


class Inconsistent(Exception):
    """A found value cannot carry its placeholder everywhere in the row: the detail names where, never the value."""


class RowScrubber:
    """One row's texts ({field: text}) with every value found in any of them replaced in all of them."""

    def __init__(self, kinds: list[str], region: str):
        self.finder = Finder(kinds, region)

    def scrub(self, fields: dict[str, str], json_fields: set[str]) -> tuple[dict[str, str], Counter]:
        """(the rewritten texts, replacements per kind). Raises Inconsistent when a value cannot be replaced in
        every text that holds it."""
        parsed = {name: parse_json(fields[name]) for name in json_fields}
        kinds, first_seen = {}, {}
        for name, text in fields.items():
            found = self.finder.in_json(parsed[name]) if parsed.get(name) is not None else self.finder.in_text(text)
            for kind, value in found:
                kinds.setdefault(value, kind)
                first_seen.setdefault(value, name)
        if not kinds:
            return fields, Counter()
        longest_first = sorted(kinds, key=len, reverse=True)
        pattern = re.compile(BEFORE + "(" + "|".join(map(re.escape, longest_first)) + ")" + AFTER)
        counts: Counter = Counter()
        replaced = set()

        def placeholder(match: re.Match) -> str:
            counts[kinds[match.group(1)]] += 1
            replaced.add(match.group(1))
            return f"<{kinds[match.group(1)].upper()}>"

        out = {}
        for name, text in fields.items():
            if parsed.get(name) is not None:
                out[name] = pattern.sub(placeholder, text)  # in place: the JSON keeps its spacing and key order
                self._check_json(name, parsed[name], out[name], pattern, kinds, first_seen)
            else:
                out[name] = on_prose(text, lambda piece: pattern.sub(placeholder, piece))
                left = pattern.search(out[name])
                if left:
                    value = left.group(1)
                    where = "" if first_seen[value] == name else f" found in {first_seen[value]} also"
                    raise Inconsistent(f"{name}: the {kinds[value]}{where} stands in code here, and code is never "
                                       "rewritten")
        missed = next((v for v in kinds if v not in replaced), None)
        if missed is not None:  # found, yet it stands nowhere as a whole token: glued to the text around it
            raise Inconsistent(f"{first_seen[missed]}: the {kinds[missed]} found there cannot be replaced as a whole "
                               "token")
        return out, counts

    @staticmethod
    def _check_json(name: str, before, text: str, pattern: re.Pattern, kinds: dict, first_seen: dict) -> None:
        """The JSON rewritten in place must parse to the document with its strings' prose rewritten (code in a
        string stays as it is), and hold none of the values any more."""
        def placeholders(value):
            if isinstance(value, str):
                return on_prose(value, lambda piece: pattern.sub(lambda m: f"<{kinds[m.group(1)].upper()}>", piece))
            if isinstance(value, list):
                return [placeholders(v) for v in value]
            if isinstance(value, dict):
                return {placeholders(k): placeholders(v) for k, v in value.items()}
            return value
        after = parse_json(text)
        if after is not None and after == placeholders(before) \
                and not any(pattern.search(s) for s in json_strings(after)):
            return
        held = json.dumps(before, ensure_ascii=False)
        value = next((v for v in kinds if v in held), next(iter(kinds)))
        raise Inconsistent(f"{name}: the {kinds[value]} found in {first_seen[value]} cannot be replaced in this JSON "
                           "in place (it stands as a number, escaped, or in code)")


def parse_json(text: str):
    """The JSON document `text` holds when it is a JSON object or array, else None (a tool result may be prose)."""
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def json_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *json_strings(v)]]
    return []
