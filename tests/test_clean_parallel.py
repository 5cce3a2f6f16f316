"""clean_data's row-local steps run batch by batch, on one process or a pool: the same kept rows, quarantine,
clusters, rewrites and report, record for record and in the same order, for any batch size and number of workers."""

import json
import pickle

import pytest
from pydantic import TypeAdapter

from engine.data.clean import TokenCounter, clean
from engine.data.ingest import ingest
from engine.data.registry import resolve_sources
from engine.recipe import CleanSection, CleanStep

STOCK = "tests/fixtures/llamafactory/data"
SELECTED = ["alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo"]
EVERY_STEP = [{"step": "normalize"}, {"step": "strip_html"},
              {"step": "length", "min_chars": 40, "max_chars": 3000, "max_tokens": 700},
              {"step": "repetition"}, {"step": "exact_dedup"}, {"step": "pii"},
              {"step": "blocklist", "words": ["the cat", "Python"]}, {"step": "near_dedup", "threshold": 0.5}]


@pytest.fixture(scope="module")
def planted_rows():
    """The LLaMA-Factory demo files, with every 7th of their first 300 rows copied under a new row id."""
    rows, quarantined, _ = ingest(resolve_sources(STOCK, "dataset_info.json", SELECTED))
    assert quarantined == []
    copies = [dict(r, row_id=f"{r['row_id'].rsplit(':', 1)[0]}:{100_000 + i}") for i, r in enumerate(rows[:300:7])]
    return rows + copies


def as_json(result) -> dict[str, str]:
    return {field: json.dumps(getattr(result, field)) for field in ("rows", "quarantine", "clusters", "report",
                                                                   "rewrites")}


def test_every_step_gives_the_same_records_for_any_batches_and_workers(planted_rows, tiny_model_dir):
    section = CleanSection(steps=[TypeAdapter(CleanStep).validate_python(s) for s in EVERY_STEP])
    counter = TokenCounter(str(tiny_model_dir))
    one = clean(planted_rows, section, SELECTED, counter)
    reasons = one.report["quarantine_by_reason"]
    assert {"too_long", "exact_duplicate", "blocklisted", "near_duplicate"} <= set(reasons), reasons
    assert one.rewrites, "some text was rewritten"
    for batch_rows, workers in ((7, 1), (97, 2), (10_000, 2)):
        assert as_json(clean(planted_rows, section, SELECTED, counter, batch_rows=batch_rows,
                             workers=workers)) == as_json(one), (batch_rows, workers)


def test_a_token_counter_travels_as_its_model_path(tiny_model_dir):
    counter = TokenCounter(str(tiny_model_dir))
    tokens = counter("How many tokens is this?")
    assert tokens > 0 and counter.tokenizer is not None
    copy = pickle.loads(pickle.dumps(counter))
    assert copy.tokenizer is None and copy("How many tokens is this?") == tokens
