"""Where a text is prose and where it is code: the rewriting steps (strip_html, pii) touch prose only, and the
repetition filter judges prose only (never code, list items or formulas).

Code is Markdown's (fenced blocks, backtick spans) and unfenced code detected line by line: a line that reads
as a statement (`def f(x):`, `EMAIL_ADDRESS = '...'`, `import os`, `print(x)`, `}`), with the indented,
commented or blank lines that continue it. No library tells code lines from prose inside a chat answer
(pygments' guess_lexer judges whole documents), so the rules are written here.
"""

from __future__ import annotations

import re
from typing import Callable

CODE = re.compile(r"(?ms)^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*(?P=fence)[ \t]*$|\Z)"  # fenced block
                  r"|(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`)", re.S)  # inline code span

# a line that opens like a statement of a programming language (lowercase keywords: prose starts sentences uppercase)
CODE_START = re.compile(r"""[ \t]*(?:
    (?:async[ \t]+)?def[ \t]+\w+[ \t]*\( | class[ \t]+\w+[ \t]*[(:{] | import[ \t]+[\w.]+
  | from[ \t]+[\w.]+[ \t]+import\b | (?:else|try|finally)[ \t]*: | return\b | \#include\b | \#define\b | \#!/ | //
  | (?:public|private|protected)[ \t]+\w | (?:function|func|fn)[ \t]+\w+[ \t]*\( | (?:const|let|var)[ \t]+\w+[ \t]*=
  | [A-Za-z_][\w.]*(?:\[[^\]\n]*\])*[ \t]*(?:[-+*/%|&^]|//|\*\*)?=(?!=)[ \t]*[^\s=]   # an assignment
)""", re.X)
BLOCK_OPENER = re.compile(r"[ \t]*(?:if|elif|while|except|for|with)\b")  # a code line when it ends with a colon
CALL = re.compile(r"[ \t]*[A-Za-z_][\w.]*\(")  # a code line when it ends with `)` or `);`
CLOSING = re.compile(r"[ \t]*[})\]]+[ \t;,)]*")


def code_line(line: str) -> bool:
    """Whether one line (no line break) reads as a statement of a programming language. Linear in its length:
    the endings are tested in Python, not by backtracking patterns."""
    end = line.rstrip()
    if CODE_START.match(line) or CLOSING.fullmatch(line) or end.endswith("{"):
        return True
    if end.endswith(";") and ("(" in end or "=" in end):
        return True
    if end.endswith(":") and BLOCK_OPENER.match(line):
        keyword = line.split()[0]
        if keyword == "for":  # `for example:` is prose, `for x in xs:` code
            return " in " in end
        return keyword != "with" or " as " in end or "(" in end
    return bool(end.endswith((")", ");")) and CALL.match(line))


CONTINUATION = re.compile(r"[ \t]+\S|[ \t]*(?:\#|//|[})\]])")  # indented, a comment or a closing bracket
LIST_ITEM = re.compile(r"[ \t]*(?:[-*+•◦▪]|\d{1,3}[.)]|[A-Za-z][.)]|\(\w{1,3}\))[ \t]+|[ \t]*\|")  # or a table row
# an equation, or an operator between numbers (3/4 + 2/3, 6h * 2): arithmetic, not prose
FORMULA = re.compile(r"=|\d[\d.,]*[ \t]*[-+*/×÷^<>%][ \t]*[-(]?\d|\d[ \t]*[a-zA-Z]?[ \t]*[*/×÷^][ \t]*\(?[a-zA-Z\d]")


def code_line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of unfenced code lines: a statement line, and the indented, comment, closing or
    blank lines that continue it (a blank line only when code continues after it)."""
    spans, at, block = [], 0, None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        end = at + len(line)
        bare = line.rstrip("\r\n")
        if code_line(bare) or (block is not None and bare.strip() and CONTINUATION.match(bare)):
            block = (block[0] if block else at, end)
        elif block is not None and not bare.strip() and continues(lines, i + 1):
            block = (block[0], end)
        elif block is not None:
            spans.append(block)
            block = None
        at = end
    if block is not None:
        spans.append(block)
    return spans


def continues(lines: list[str], i: int) -> bool:
    """Whether the next non-blank line from lines[i] carries a code block on."""
    following = next((line.rstrip("\r\n") for line in lines[i:] if line.strip()), None)
    return following is not None and (code_line(following) or bool(CONTINUATION.match(following)))


def segments(text: str) -> list[tuple[str, bool]]:
    """`text` as (piece, is_code) pieces in order: Markdown code fences and spans, and unfenced code lines, are code."""
    code = sorted([m.span() for m in CODE.finditer(text)] + code_line_spans(text))
    pieces, at = [], 0
    for start, end in code:
        if end <= at:
            continue
        if start > at:
            pieces.append((text[at:start], False))
        pieces.append((text[max(start, at):end], True))
        at = end
    if at < len(text):
        pieces.append((text[at:], False))
    return pieces


def on_prose(text: str, fn: Callable[[str], str]) -> str:
    """`fn` applied to the prose pieces of `text` only; code comes back byte-identical."""
    return "".join(piece if is_code else fn(piece) for piece, is_code in segments(text))


def prose_lines(text: str) -> list[str]:
    """The non-empty lines of prose in `text`, stripped: no code, no list items or table rows, no formulas."""
    prose = "".join(piece for piece, is_code in segments(text) if not is_code)
    return [line.strip() for line in prose.splitlines()
            if line.strip() and not LIST_ITEM.match(line) and not FORMULA.search(line)]


def repeated_lines(text: str, min_words: int) -> tuple[str, int]:
    """The prose line of at least `min_words` words (a sentence, not a speaker's name or a label) that recurs most
    in `text` (a chorus, or a loop), and how often it stands there."""
    counts: dict[str, int] = {}
    for line in prose_lines(text):
        if len(line.split()) >= min_words:
            counts[line] = counts.get(line, 0) + 1
    return max(counts.items(), key=lambda kv: kv[1], default=("", 0))
