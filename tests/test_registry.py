"""The registry as LLaMA-Factory reads it: only selected entries are validated; hf_hub_url loads through
datasets.load_dataset; a column the registry names but the data lacks stops the run before any work."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.data.sources import source_identity
from engine.store.content import ContentHasher
from engine.data.ingest import ingest_source
from engine.data.record_counts import records_in_source
from engine.data.registry import check_columns, load_registry, resolve_sources, select_sources
from engine.errors import RecipeError

ALPACA = [{"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"},
          {"instruction": "Uppercase the word.", "input": "abc", "output": "ABC"}]


def registry(tmp_path, entries):
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    (tmp_path / "qa.json").write_text(json.dumps(ALPACA))


LLAMAFACTORY_INFO = {  # entries as they stand in LLaMA-Factory's data/dataset_info.json
    "qa": {"file_name": "qa.json", "subset": None, "split": "train", "num_samples": 1, "revision": "main",
           "load_from": "file", "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
    "glaive_toolcall_en": {"hf_hub_url": "llamafactory/glaive_toolcall_en", "formatting": "sharegpt",
                           "columns": {"messages": "conversations", "tools": "tools"}},
    "belle_multiturn": {"script_url": "belle_multiturn", "formatting": "sharegpt"},
    "modelers": {"om_hub_url": "x/y"},
    "cloud": {"cloud_file_name": "s3://bucket/data.json"},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    "odd": {"file_name": "qa.json", "unknown_key": 1},
}


def test_unselected_hub_multimodal_and_odd_entries_never_stop_a_run(tmp_path):
    registry(tmp_path, LLAMAFACTORY_INFO)
    selection = select_sources(tmp_path, "dataset_info.json", ["qa"])
    assert list(selection.sources) == ["qa"]
    assert {u["name"] for u in selection.not_used} == set(LLAMAFACTORY_INFO) - {"qa"}
    reasons = {u["name"]: u["reason"] for u in selection.not_used}  # and why each could not be used anyway
    assert reasons["mllm_demo"] == "not in data.dataset; multimodal (images columns)"
    assert reasons["alpaca_en"].startswith("not in data.dataset; hf_hub_url")
    rows, _ = ingest_source("qa", *selection.sources["qa"])
    assert len(rows) == 1  # num_samples
    everything = select_sources(tmp_path, "dataset_info.json", [])  # empty = every usable entry
    assert list(everything.sources) == ["qa"]
    reasons = {u["name"]: u["reason"] for u in everything.not_used}
    assert reasons["mllm_demo"].startswith("multimodal (images")
    assert reasons["belle_multiturn"].startswith("script_url")
    assert reasons["alpaca_en"].startswith("hf_hub_url")
    assert reasons["odd"].startswith("invalid: ") and "unknown_key" in reasons["odd"]


@pytest.mark.parametrize("name, message", [
    ("mllm_demo", "dataset 'mllm_demo': columns images: tuneline trains text-only models"),
    ("belle_multiturn", "dataset 'belle_multiturn': script_url is not supported"),
    ("modelers", "dataset 'modelers': om_hub_url is not supported"),
    ("cloud", "dataset 'cloud': cloud_file_name is not supported"),
    ("odd", "dataset 'odd': unknown_key: Extra inputs are not permitted"),
])
def test_a_selected_entry_tuneline_cannot_use_is_refused_by_name(tmp_path, name, message):
    registry(tmp_path, LLAMAFACTORY_INFO)
    with pytest.raises(RecipeError, match=message):
        resolve_sources(tmp_path, "dataset_info.json", [name])


def test_hf_hub_url_offline_fails_before_any_work(tmp_path, monkeypatch):
    registry(tmp_path, LLAMAFACTORY_INFO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError, match="'glaive_toolcall_en': hf_hub_url 'llamafactory/glaive_toolcall_en' is a "
                                          "hub dataset and HF_HUB_OFFLINE=1 is set"):
        resolve_sources(tmp_path, "dataset_info.json", ["qa", "glaive_toolcall_en"])


def test_hf_hub_url_naming_a_local_directory_loads_with_load_dataset(tmp_path):
    hub = tmp_path / "my_hub_copy"
    (hub / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ALPACA[:1]), hub / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(ALPACA[1:]), hub / "data" / "test-00000-of-00001.parquet")
    registry(tmp_path, {"local_hub": {"hf_hub_url": "my_hub_copy", "split": "test"},
                        "remote": {"hf_hub_url": "org/remote"}})
    selection = select_sources(tmp_path, "dataset_info.json", [])  # a local hf_hub_url directory counts as usable
    entry, path = selection.sources["local_hub"]
    assert path == hub.resolve() and [u["name"] for u in selection.not_used] == ["remote"]
    rows, quarantine = ingest_source("local_hub", entry, path)
    assert quarantine == [] and [json.loads(r["messages"])[0]["content"] for r in rows] == ["Uppercase the word.\nabc"]
    assert records_in_source(entry, path) == 1  # raw_data's own count: the split's num_rows
    assert source_identity(selection.sources, ContentHasher())["local_hub"]["sha256"]


def test_llamafactory_keys_are_accepted(tmp_path):
    registry(tmp_path, LLAMAFACTORY_INFO)
    entry = load_registry(tmp_path, "dataset_info.json", ["qa", "alpaca_en"])
    assert (entry["qa"].revision, entry["qa"].load_from, entry["alpaca_en"].hub_key) == ("main", "file", "hf_hub_url")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "hello"}]}) + "\n")
    registry(tmp_path, {"chat": {"file_name": "chat.jsonl", "formatting": "openai", "columns": {"messages": "messages"},
                                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                          "assistant_tag": "assistant"}}})
    rows, quarantine = ingest_source("chat", *resolve_sources(tmp_path, "dataset_info.json", [])["chat"])
    assert quarantine == [] and json.loads(rows[0]["messages"])[1]["content"] == "hello"


def test_a_named_column_the_file_lacks_stops_the_run_before_any_work(tmp_path):
    registry(tmp_path, {"qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "output"}}})
    with pytest.raises(RecipeError, match=r"dataset 'qa': columns.prompt is 'question', but qa.json has no such "
                                          r"column \(its first 2 records have \['input', 'instruction', 'output'\]\)"):
        resolve_sources(tmp_path, "dataset_info.json", [])


def test_check_columns_looks_past_rows_without_an_optional_column(tmp_path):
    rows = [dict(r) for r in ALPACA * 5]
    rows[7]["sys"] = "Be brief."  # only one record has the system column: it is there
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.jsonl", "columns": {"system": "sys"}}}))
    entry, path = resolve_sources(tmp_path, "dataset_info.json", [])["qa"]
    check_columns("qa", entry, path)
    with pytest.raises(RecipeError, match="columns.system is 'sys'"):
        check_columns("qa", entry, path, records=5)


def test_sources_come_in_the_recipes_order(tmp_path):
    registry(tmp_path, {"a": {"file_name": "qa.json"}, "b": {"file_name": "qa.json"}, "c": {"file_name": "qa.json"}})
    assert list(resolve_sources(tmp_path, "dataset_info.json", ["c", "a"])) == ["c", "a"]
    assert list(resolve_sources(tmp_path, "dataset_info.json", [])) == ["a", "b", "c"]
