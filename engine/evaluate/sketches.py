"""Pictures small enough to show inline on the Dagster asset page: a stage's loss curve and its bar charts as SVG
in a Markdown image with a data URI, under INLINE_LIMIT characters. Dagster 1.13's UI renders a Markdown metadata
value in place only below 1,000 characters (ui-core MetadataEntry.tsx, `mdStr.length < 1000`); a longer one (the
PNGs of engine/evaluate/plots.py are ~20 kB) waits behind `[Show Markdown]`. Written by hand: no plotting library
draws to a budget of characters; the full-size PNGs stay in the artifact's plots/.
"""

from __future__ import annotations

from urllib.parse import quote

INLINE_LIMIT = 999  # Dagster's UI shows a Markdown value in place when it is shorter than 1,000 characters
WIDTH, HEIGHT, TOP, BOTTOM = 320, 110, 16, 96  # the drawing; curves between TOP and BOTTOM
# characters a Markdown image's data URI may keep as they are: not space, quotes, <, >, #, %, parentheses
SAFE = "/:=,.'-_;!*~+@?&$"


def inline_image(name: str, svg: str) -> str:
    """`![name](data:image/svg+xml,...)`: the SVG percent-encoded where a Markdown link or a data URI needs it."""
    return f"![{name}](data:image/svg+xml,{quote(svg, safe=SAFE)})"


def _svg(body: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' font-family='sans-serif' "
            f"font-size='11'>{body}</svg>")


def _thin(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """At most `most` points, evenly spaced, the first and last kept."""
    if len(points) <= most:
        return points
    return [points[round(i * (len(points) - 1) / (most - 1))] for i in range(most)]


def _num(value: float) -> str:
    return f"{value:.3g}"


def loss_sketch(curve: list[dict], evals: dict[str, float | None] | None = None, key: str = "loss") -> str:
    """The training loss by step as one line, eval losses as dashed lines, the first and last loss written out."""
    evals = {k: v for k, v in (evals or {}).items() if v is not None}
    points = [(float(p["step"]), float(p[key])) for p in curve]
    for most in (48, 32, 20, 12, 6, 2):
        markdown = inline_image(f"{key}_curve", _loss_svg(_thin(points, most), points, evals, key))
        if len(markdown) <= INLINE_LIMIT:
            return markdown
    raise ValueError(f"a loss curve of {len(points)} points does not fit {INLINE_LIMIT} characters")


def _loss_svg(drawn: list[tuple[float, float]], points: list[tuple[float, float]], evals: dict[str, float],
              key: str = "loss") -> str:
    values = [y for _, y in points] + list(evals.values())
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    first, last = points[0][0], points[-1][0]

    def x(step: float) -> int:
        return round((step - first) / ((last - first) or 1.0) * (WIDTH - 4)) + 2

    def y(value: float) -> int:
        return round(BOTTOM - (value - low) / span * (BOTTOM - TOP))
    line = ",".join(f"{x(s)},{y(v)}" for s, v in drawn)
    dashed = "".join(f"<path d='M0,{y(v)}H{WIDTH}' stroke='gray' stroke-dasharray='4'/>" for v in evals.values())
    caption = (f"{key} {_num(points[0][1])} to {_num(points[-1][1])}, steps {int(first)}-{int(last)}"
               + "".join(f", {k} {_num(v)}" for k, v in evals.items()))
    return _svg(f"<polyline points='{line}' fill='none' stroke='royalblue' stroke-width='2'/>{dashed}"
                f"<text x='2' y='{HEIGHT - 2}'>{_escape(caption)}</text>")


def bars_sketch(name: str, counts: dict[str, int] | list[tuple[str, int]], caption: str) -> str:
    """Named counts (a dict: reasons) as horizontal bars, each labelled with its name and count, the largest first
    kept and the rest summed as `other` where they do not fit; buckets (a list of ("low-high", count): a histogram)
    as columns in their order, neighbours merged where they do not fit, the range in the caption."""
    if isinstance(counts, dict):
        items = [(str(k), int(v)) for k, v in counts.items()]
        tries = [_named_svg(items, caption, most, width) for most in (6, 4, 3, 2) for width in (24, 14)]
    else:
        items = [(str(k), int(v)) for k, v in counts]
        tries = [_histogram_svg(_merged(items, factor), caption) for factor in (1, 2, 4, 8, 16, 32, 64)]
    for svg in tries:
        markdown = inline_image(name, svg)
        if len(markdown) <= INLINE_LIMIT:
            return markdown
    raise ValueError(f"a bar chart of {len(items)} bars does not fit {INLINE_LIMIT} characters")


def _named_svg(items: list[tuple[str, int]], caption: str, most: int, width: int) -> str:
    if not items:
        return _svg(f"<text x='2' y='{HEIGHT // 2}'>{_escape(caption)}: none</text>")
    if len(items) > most:
        kept = sorted(items, key=lambda item: -item[1])[:most - 1]
        items = kept + [("other", sum(v for _, v in items) - sum(v for _, v in kept))]
    top, row = max(v for _, v in items) or 1, (BOTTOM - 4) // len(items)
    bars = "".join(f"<rect x='0' y='{i * row}' width='{max(round(v / top * 150), 1)}' height='{row - 3}'/>"
                   f"<text x='{max(round(v / top * 150), 1) + 4}' y='{i * row + row - 6}' fill='black'>"
                   f"{_escape(k[:width])} {v}</text>" for i, (k, v) in enumerate(items))
    return _svg(f"<g fill='royalblue'>{bars}</g><text x='2' y='{HEIGHT - 2}'>{_escape(caption)}</text>")


def _merged(items: list[tuple[str, int]], factor: int) -> list[tuple[str, int]]:
    """Each `factor` neighbouring buckets as one ("low-high", summed count)."""
    groups = [items[i:i + factor] for i in range(0, len(items), factor)]
    return [(f"{g[0][0].split('-')[0]}-{g[-1][0].split('-')[-1]}", sum(v for _, v in g)) for g in groups]


def _histogram_svg(items: list[tuple[str, int]], caption: str) -> str:
    if not items:
        return _svg(f"<text x='2' y='{HEIGHT // 2}'>{_escape(caption)}: none</text>")
    top, column = max(v for _, v in items) or 1, max(WIDTH // len(items), 2)
    bars = "".join(f"<rect x='{i * column}' y='{BOTTOM - max(round(v / top * (BOTTOM - TOP)), 1)}' "
                   f"width='{max(column - 2, 1)}' height='{max(round(v / top * (BOTTOM - TOP)), 1)}'/>"
                   for i, (_, v) in enumerate(items))
    caption = f"{caption}, {items[0][0].split('-')[0]}-{items[-1][0].split('-')[-1]}, most {top}"
    return _svg(f"<g fill='royalblue'>{bars}</g><text x='2' y='{HEIGHT - 2}'>{_escape(caption)}</text>")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def stage_sketches(metrics: dict) -> dict[str, str]:
    """The inline pictures a stage's metrics call for, as engine/evaluate/plots.py draws its PNGs: the loss curve of
    a training stage (with its eval losses), the quarantine reasons and the token-length histogram of a data stage."""
    found = {}
    if metrics.get("loss_curve"):
        found["loss_curve"] = loss_sketch(metrics["loss_curve"], {"eval before": metrics.get("eval_loss_before"),
                                                                  "eval after": metrics.get("eval_loss_after")})
    if metrics.get("reward_curve"):  # an online RL stage's mean reward per logged step
        found["reward_curve"] = loss_sketch(metrics["reward_curve"], key="reward")
    if isinstance(metrics.get("quarantine_by_reason"), dict):
        found["quarantine_reasons"] = bars_sketch("quarantine_reasons", metrics["quarantine_by_reason"],
                                                  "quarantined rows by reason")
    if metrics.get("length_histogram"):
        found["token_lengths"] = bars_sketch("token_lengths", [tuple(b) for b in metrics["length_histogram"]],
                                             "tokens per row")
    return found
