"""The pictures the asset page shows in place: valid SVG, under Dagster's 1,000-character limit for inline
Markdown, whatever the curve's length or the number of reasons."""

import math
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import pytest

from engine.evaluate.sketches import INLINE_LIMIT, bars_sketch, loss_sketch, stage_sketches

SVG = "{http://www.w3.org/2000/svg}"


def parsed(markdown: str, name: str) -> ET.Element:
    prefix = f"![{name}](data:image/svg+xml,"
    assert markdown.startswith(prefix) and markdown.endswith(")") and len(markdown) <= INLINE_LIMIT
    body = markdown[len(prefix):-1]
    assert not set(body) & set(" #()<>\"")  # nothing a Markdown link or a data URI breaks on
    return ET.fromstring(unquote(body))


@pytest.mark.parametrize("steps", [1, 2, 50, 5000])
def test_a_loss_curve_of_any_length_fits_and_keeps_its_ends(steps):
    curve = [{"step": i, "loss": 3 * math.exp(-i / 40) + 0.1} for i in range(1, steps + 1)]
    svg = parsed(loss_sketch(curve, {"eval before": 3.2, "eval after": None}), "loss_curve")
    (line,) = svg.iter(f"{SVG}polyline")
    numbers = [int(n) for n in line.get("points").split(",")]
    assert len(numbers) // 2 == min(steps, 48) or len(numbers) // 2 < 48
    text = "".join(t.text for t in svg.iter(f"{SVG}text"))
    assert f"steps 1-{steps}" in text and "eval before 3.2" in text and "eval after" not in text
    assert len(list(svg.iter(f"{SVG}path"))) == 1  # the one eval loss given, dashed


def test_many_reasons_fit_with_the_rest_summed_as_other():
    reasons = {f"reason_number_{i}_with_a_long_name": 100 - i for i in range(12)}
    svg = parsed(bars_sketch("quarantine_reasons", reasons, "quarantined rows by reason"), "quarantine_reasons")
    assert len(list(svg.iter(f"{SVG}rect"))) >= 2


def test_a_stage_gets_the_pictures_its_metrics_call_for():
    found = stage_sketches({"loss_curve": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
                            "quarantine_by_reason": {"exact_duplicate": 3, "empty <answer> & more": 1},
                            "length_histogram": [["0-63", 5], ["64-127", 9], ["128-191", 0]] * 3})
    assert set(found) == {"loss_curve", "quarantine_reasons", "token_lengths"}
    texts = ["".join(t.text or "" for t in parsed(v, k).iter(f"{SVG}text")) for k, v in found.items()]
    assert "empty <answer> & more 1" in texts[1]
    assert stage_sketches({"quarantine_by_reason": {}})["quarantine_reasons"]


def test_a_histogram_of_many_buckets_fits_by_merging_neighbours():
    buckets = [(f"{i * 8}-{i * 8 + 7}", i % 7) for i in range(64)]
    svg = parsed(bars_sketch("token_lengths", buckets, "tokens per row"), "token_lengths")
    assert 2 <= len(list(svg.iter(f"{SVG}rect"))) < 64
    assert "0-511" in "".join(t.text for t in svg.iter(f"{SVG}text"))
