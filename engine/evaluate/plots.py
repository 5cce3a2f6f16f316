"""Pictures a person reads: a training stage's loss curve, a data stage's bar charts. PNG files inside the
artifact's plots/ (the asset page shows small SVGs of the same in place, engine/evaluate/sketches.py); drawn with
matplotlib's Agg canvas, no display needed."""

from __future__ import annotations

import io
import os
from pathlib import Path

PLOTS_DIR = "plots"  # inside a stage's artifact
LOSS_PNG, QUARANTINE_PNG, LENGTHS_PNG = "loss.png", "quarantine.png", "token_lengths.png"


def _figure(width: float = 6.0, height: float = 3.2):
    os.environ.setdefault("MPLCONFIGDIR", str(Path.home() / ".cache" / "matplotlib"))  # no writable ~ warns
    from matplotlib.figure import Figure  # the object API: no pyplot state shared between threads or runs
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_curve_png(curve: list[dict], title: str, evals: dict[str, float] | None = None) -> bytes:
    """Training loss by step; eval losses (e.g. before and after) as labelled horizontal lines."""
    figure, axes = _figure()
    axes.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker="o", markersize=3, label="train loss")
    for (label, value), style in zip((evals or {}).items(), ("--", ":", "-.")):
        if value is not None:
            axes.axhline(value, linestyle=style, color="grey", label=f"{label} {value:.4g}")
    axes.set(title=title, xlabel="step", ylabel="loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def bars_png(counts: dict[str, int] | list[tuple[str, int]], title: str, xlabel: str, ylabel: str = "rows") -> bytes:
    """One bar per label (reasons, length buckets), in the order given."""
    items = list(counts.items()) if isinstance(counts, dict) else list(counts)
    figure, axes = _figure(6.0, 3.2 + 0.12 * max(len(items) - 8, 0))
    labels, values = [str(k) for k, _ in items] or ["(none)"], [v for _, v in items] or [0]
    axes.barh(labels[::-1], values[::-1], color="#4f6bed")
    for y, value in enumerate(values[::-1]):
        axes.annotate(str(value), (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    axes.set(title=title, xlabel=ylabel, ylabel=xlabel)
    axes.margins(x=0.15)
    return _png(figure)


def save_plot(out: Path, name: str, png: bytes) -> Path:
    """out/plots/<name>: part of the artifact, published with it."""
    path = out / PLOTS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def draw_stage_plots(out: Path, stage: str, metrics: dict) -> list[str]:
    """The pictures a stage's metrics call for, saved in its artifact: the loss curve of a training stage (with its
    eval losses), the quarantine reasons and the token-length histogram of a data stage. Returns their names."""
    drawn = []
    if metrics.get("loss_curve"):
        evals = {"eval before": metrics.get("eval_loss_before"), "eval after": metrics.get("eval_loss_after")}
        save_plot(out, LOSS_PNG, loss_curve_png(metrics["loss_curve"], f"{stage}: training loss", evals))
        drawn.append(LOSS_PNG)
    if isinstance(metrics.get("quarantine_by_reason"), dict):
        save_plot(out, QUARANTINE_PNG, bars_png(metrics["quarantine_by_reason"], f"{stage}: quarantined rows",
                                                "reason"))
        drawn.append(QUARANTINE_PNG)
    if metrics.get("length_histogram"):
        save_plot(out, LENGTHS_PNG, bars_png([tuple(b) for b in metrics["length_histogram"]],
                                             f"{stage}: tokens per row", "tokens", "rows"))
        drawn.append(LENGTHS_PNG)
    return drawn
