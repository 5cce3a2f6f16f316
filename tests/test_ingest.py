import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from engine.data.ingest import ingest_source
from engine.data.registry import DatasetEntry, resolve_sources
from engine.errors import RecipeError
from engine.store.tables import table_dicts


def test_every_planted_malformed_row_is_quarantined_with_its_reason(sample_rows):
    rows, quarantine, counts = sample_rows
    reasons = Counter((q["source"], q["reason"]) for q in quarantine)
    assert reasons[("alpaca_tasks", "missing_field")] == 1  # no output
    assert reasons[("alpaca_tasks", "wrong_type")] == 1  # instruction is a number
    assert reasons[("alpaca_tasks", "empty_field")] == 2  # empty output, empty instruction
    assert reasons[("alpaca_tasks", "not_an_object")] == 1
    assert reasons[("sharegpt_tasks", "no_assistant_turn")] == 1
    assert reasons[("sharegpt_tasks", "bad_role")] == 1
    assert reasons[("openai_tasks", "invalid_json")] == 1
    assert reasons[("preference_tasks", "missing_field")] == 1
    for c in counts.values():  # nothing dropped silently
        assert c["rows_in"] == c["accepted"] + c["quarantined"]
    assert len(rows) + len(quarantine) == sum(c["rows_in"] for c in counts.values())


def test_formats_normalize_to_one_schema(sample_rows):
    rows, _, _ = sample_rows
    by_source = {r["source"]: r for r in rows}
    for source in ("alpaca_tasks", "sharegpt_tasks", "openai_tasks"):
        messages = json.loads(by_source[source]["messages"])
        assert messages[-1]["role"] == "assistant" and by_source[source]["kind"] == "sft"
    pref = by_source["preference_tasks"]
    assert pref["kind"] == "preference" and pref["chosen"] and pref["rejected"]
    assert json.loads(pref["messages"])[-1]["role"] == "user"


def test_alpaca_columns_system_and_history(tmp_path):
    file = tmp_path / "a.json"
    file.write_text(json.dumps([{"q": "Add.", "i": "1 + 2", "a": "3", "sys": "Be brief.", "h": [["hi", "hello"]]}]))
    entry = DatasetEntry(file_name="a.json", columns={"prompt": "q", "query": "i", "response": "a", "system": "sys",
                                                      "history": "h"})
    rows, quarantine = ingest_source("a", entry, file)
    assert not quarantine
    assert json.loads(rows[0]["messages"]) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Add.\n1 + 2"},
        {"role": "assistant", "content": "3"}]


def test_path_escaping_the_data_root_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.json").write_text("[]")
    (tmp_path / "data" / "datasets.yaml").write_text("evil:\n  file_name: ../secret.json\n")
    with pytest.raises(RecipeError, match="escapes the data root"):
        resolve_sources(tmp_path / "data", "datasets.yaml", [])


def test_missing_data_file_and_unknown_dataset_are_named(tmp_path):
    (tmp_path / "datasets.yaml").write_text("gone:\n  file_name: gone.json\n")
    with pytest.raises(RecipeError, match="gone.json does not exist"):
        resolve_sources(tmp_path, "datasets.yaml", [])
    with pytest.raises(RecipeError, match="'other' is not in"):
        resolve_sources(tmp_path, "datasets.yaml", ["other"])


def test_a_selected_hub_dataset_gets_a_clear_error_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"}}))
    assert resolve_sources(tmp_path, "dataset_info.json", []) == {}  # not selected: listed as not used
    with pytest.raises(RecipeError, match="'alpaca_en': hf_hub_url 'llamafactory/alpaca_en' is a hub dataset and "
                                          "HF_HUB_OFFLINE=1 is set"):
        resolve_sources(tmp_path, "dataset_info.json", ["alpaca_en"])


def test_tools_keep_the_file_s_key_order(tmp_path):
    """The chat template renders the tools JSON: its keys stay in the file's order (name, description,
    parameters), as LLaMA-Factory passes them, never re-sorted."""
    tools = '[{"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {}}}]'
    file = tmp_path / "t.json"
    file.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Weather?"},
                                                   {"from": "gpt", "value": "Sunny."}], "tools": tools}]))
    entry = DatasetEntry(file_name="t.json", formatting="sharegpt", columns={"messages": "conversations", "tools": "tools"})
    rows, _ = ingest_source("t", entry, file)
    assert rows[0]["tools"] == tools


def test_max_samples_reads_each_source_s_first_records_and_counts_the_rest(tmp_path):
    from engine.data.ingest import ingest_to
    from engine.data.registry import resolve_sources
    from engine.store.tables import read_rows
    sources = resolve_sources("tests/fixtures/llamafactory/data", "dataset_info.json", ["identity", "dpo_en_demo"])
    counts = ingest_to(tmp_path, sources, max_samples=10)
    assert counts["by_source"]["identity"] == {"rows_in": 10, "accepted": 10, "quarantined": 0,
                                               "beyond_max_samples": 81, "records_in_files": 91, "num_samples": None}
    assert counts["by_source"]["dpo_en_demo"]["beyond_max_samples"] == 290
    rows = list(table_dicts(tmp_path, "rows"))
    assert [r["row_id"] for r in rows if r["source"] == "identity"] == [f"identity:{i}" for i in range(10)]


def test_raw_rows_over_several_shards_read_the_same_as_one(tmp_path, monkeypatch):
    """raw_data's tables split at SHARD_ROWS (here 7) hold the same rows, in the same order, as one shard."""
    from engine.data.ingest import ingest_to
    from engine.store import tables
    from engine.store.tables import ShardWriter, rows_by_source, table_files, table_rows
    sources = resolve_sources("tests/fixtures/llamafactory/data", "dataset_info.json", ["identity"])
    (tmp_path / "one").mkdir()
    one = ingest_to(tmp_path / "one", sources)
    monkeypatch.setattr(ShardWriter.__init__, "__defaults__", (7, tables.BATCH_ROWS))
    (tmp_path / "many").mkdir()
    many = ingest_to(tmp_path / "many", sources)
    assert one == many
    assert len(table_files(tmp_path / "one", "rows")) == 1
    assert len(table_files(tmp_path / "many", "rows")) == -(-91 // 7)
    assert table_rows(tmp_path / "many", "rows") == 91
    assert list(table_dicts(tmp_path / "many", "rows")) == list(table_dicts(tmp_path / "one", "rows"))
    assert rows_by_source(tmp_path / "many", "rows") == rows_by_source(tmp_path / "one", "rows")
    # no quarantined record: one empty shard that keeps the schema
    empty = table_files(tmp_path / "many", "quarantine")
    assert len(empty) == 1 and table_rows(tmp_path / "many", "quarantine") == 0
    assert pq.read_schema(empty[0]).names == tables.QUARANTINE_COLUMNS
