"""Every file type and LLaMA-Factory format reaches the normalized schema; junk never crashes ingest."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data.ingest import ingest_source
from engine.data.readers import json_records
from engine.data.record_counts import records_in_source
from engine.data.registry import DatasetEntry, load_registry, resolve_sources
from engine.errors import DataError, RecipeError

ALPACA = [{"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"},
          {"instruction": "Uppercase the word.", "input": "abc", "output": "ABC"}]
EXPECTED = [[{"role": "user", "content": "Add the two numbers.\n1 + 2"}, {"role": "assistant", "content": "3"}],
            [{"role": "user", "content": "Uppercase the word.\nabc"}, {"role": "assistant", "content": "ABC"}]]


def messages_of(rows):
    return [json.loads(r["messages"]) for r in rows]


def write_as(path, rows):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".csv"])
def test_every_file_type_round_trips(tmp_path, suffix):
    file = write_as(tmp_path / f"data{suffix}", ALPACA)
    rows, quarantine = ingest_source("s", DatasetEntry(file_name=file.name), file)
    assert quarantine == [] and messages_of(rows) == EXPECTED
    assert [r["row_id"] for r in rows] == ["s:0", "s:1"]
    assert records_in_source(DatasetEntry(file_name=file.name), file) == 2  # raw_data's own count, apart


def test_hf_save_to_disk_folders_and_their_split(tmp_path):
    Dataset.from_list(ALPACA).save_to_disk(tmp_path / "plain")
    DatasetDict({"train": Dataset.from_list(ALPACA[:1]), "test": Dataset.from_list(ALPACA[1:])}).save_to_disk(
        tmp_path / "dict")
    assert messages_of(ingest_source("p", DatasetEntry(file_name="plain"), tmp_path / "plain")[0]) == EXPECTED
    test_split = ingest_source("d", DatasetEntry(file_name="dict", split="test"), tmp_path / "dict")[0]
    assert messages_of(test_split) == EXPECTED[1:]
    assert records_in_source(DatasetEntry(file_name="plain"), tmp_path / "plain") == 2
    assert records_in_source(DatasetEntry(file_name="dict", split="test"), tmp_path / "dict") == 1


def test_a_folder_of_files_is_one_source(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    write_as(folder / "a.jsonl", ALPACA[:1])
    write_as(folder / "b.parquet", ALPACA[1:])
    rows, _ = ingest_source("drop", DatasetEntry(file_name="drop"), folder)
    assert [r["row_id"] for r in rows] == ["drop:a.jsonl:0", "drop:b.parquet:0"]
    assert records_in_source(DatasetEntry(file_name="drop"), folder) == 2
    assert messages_of(rows) == EXPECTED


def test_num_samples_reads_only_the_first_rows(tmp_path):
    file = write_as(tmp_path / "d.jsonl", ALPACA * 5)
    rows, _ = ingest_source("s", DatasetEntry(file_name="d.jsonl", num_samples=3), file)
    assert len(rows) == 3


def test_json_arrays_stream_item_by_item(tmp_path):
    file = tmp_path / "big.json"
    file.write_text(json.dumps(ALPACA)[:-1] + ', {"instruction": ')  # the tail is broken
    records = json_records(file)
    assert next(records) == (0, ALPACA[0])  # served before the parser reached the broken tail
    with pytest.raises(DataError, match="big.json: not a readable JSON document"):
        list(records)


def test_llamafactory_dataset_info_loads_unchanged(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer", "system": "sys"}},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "turns", "tools": "tools"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "agent",
                          "function_tag": "call", "observation_tag": "result", "system_tag": "rules"}},
        "pairs": {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                  "columns": {"messages": "conversations", "chosen": "good", "rejected": "bad"}},
        "kto": {"file_name": "kto.json", "columns": {"prompt": "instruction", "response": "output", "kto_tag": "ok"}},
    }))
    write_as(tmp_path / "qa.json", [{"question": "2 + 2?", "answer": "4", "sys": "Be brief."}])
    write_as(tmp_path / "chat.json", [{"turns": [
        {"speaker": "rules", "text": "You can call tools."}, {"speaker": "client", "text": "Weather in Oslo?"},
        {"speaker": "call", "text": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
        {"speaker": "result", "text": '{"celsius": 3}'}, {"speaker": "agent", "text": "It is 3 degrees."}],
        "tools": '[{"name": "weather", "parameters": {"city": "string"}}]'}])
    write_as(tmp_path / "pairs.json", [{"conversations": [{"from": "human", "value": "1 + 1?"}],
                                        "good": {"from": "gpt", "value": "2"}, "bad": {"from": "gpt", "value": "3"}}])
    write_as(tmp_path / "kto.json", [{"instruction": "1 + 1?", "output": "2", "ok": True},
                                     {"instruction": "1 + 1?", "output": "3", "ok": False}])
    sources = resolve_sources(tmp_path, "dataset_info.json", [])
    rows = {name: ingest_source(name, *sources[name]) for name in sources}
    assert all(quarantine == [] for _, quarantine in rows.values())
    qa = rows["qa"][0][0]
    assert json.loads(qa["messages"])[0] == {"role": "system", "content": "Be brief."}
    chat = rows["chat"][0][0]
    assert [m["role"] for m in json.loads(chat["messages"])] == [
        "system", "user", "function_call", "observation", "assistant"]
    assert json.loads(chat["tools"])[0]["name"] == "weather"
    pair = rows["pairs"][0][0]
    assert (pair["kind"], pair["chosen"], pair["rejected"]) == ("preference", "2", "3")
    assert [(r["kind"], r["label"]) for r in rows["kto"][0]] == [("kto", "true"), ("kto", "false")]


def test_registry_errors_name_the_entry(tmp_path):
    write_as(tmp_path / "p.json", ALPACA)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"pics": {"file_name": "p.json", "columns": {"images": "i"}}}))
    with pytest.raises(RecipeError, match="dataset 'pics': columns images: tuneline trains text-only models"):
        resolve_sources(tmp_path, "dataset_info.json", ["pics"])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"x": {"file_name": "p.json", "columns": {"answer": "a"}}}))
    with pytest.raises(RecipeError, match="dataset 'x': columns: unknown column key 'answer'"):
        load_registry(tmp_path, "dataset_info.json")


def test_allowed_roots_let_a_recipe_read_outside_the_data_root(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "shared").mkdir()
    write_as(tmp_path / "shared" / "d.jsonl", ALPACA)
    (tmp_path / "data" / "datasets.yaml").write_text("d:\n  file_name: ../shared/d.jsonl\n")
    with pytest.raises(RecipeError, match="escapes the data root"):
        resolve_sources(tmp_path / "data", "datasets.yaml", [])
    assert resolve_sources(tmp_path / "data", "datasets.yaml", [], [str(tmp_path / "shared")])["d"][1].is_file()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=5), max_leaves=12)
row_like = st.fixed_dictionaries({}, optional={"instruction": json_values, "input": json_values,
                                               "output": json_values, "system": json_values, "history": json_values,
                                               "conversations": json_values}) | json_values


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(row_like, max_size=8), sharegpt=st.booleans())
def test_random_and_malformed_rows_never_crash_and_are_all_accounted(tmp_path, records, sharegpt):
    file = tmp_path / "fuzz.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    entry = DatasetEntry(file_name="fuzz.jsonl", formatting="sharegpt" if sharegpt else "alpaca")
    rows, quarantine = ingest_source("f", entry, file)
    assert len(rows) + len(quarantine) == len(records) + 1
    assert quarantine[-1]["reason"] == "invalid_json"
    assert all(q["reason"] and q["detail"] for q in quarantine)


JSON_PIECES = st.sampled_from(['{"a": 1}', '{"a": "x,]\\\\"}', '"s\\"]"', "NaN", "1e999", '{"k": 1, "k": 2}', "", " ",
                               "[1, [2]]", '"\\ud800"', "\n", '{"a": [}', "{", "]", "null"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(JSON_PIECES, max_size=8), block=st.sampled_from([1, 3, 1 << 20]))
def test_a_json_arrays_records_are_counted_as_the_reader_serves_them(tmp_path, items, block, monkeypatch):
    """raw_data's independent count of a JSON array's items (a scan, any block size) equals the records the
    streaming reader serves, malformed items included, wherever the reader does not refuse the whole file."""
    from engine.data import record_counts
    monkeypatch.setattr(record_counts, "BLOCK", block)
    file = tmp_path / "fuzz.json"
    file.write_text("[" + ",".join(items) + "]")
    try:
        served = sum(1 for _ in json_records(file))
    except DataError:
        return
    assert record_counts.json_items(file) == served


def test_raw_data_streams_rows_to_parquet_shards_in_batches(tmp_path, monkeypatch):
    from engine.data.ingest import ingest_to
    from engine.store import tables
    file = write_as(tmp_path / "d.jsonl", ALPACA * 12 + ["not an object"])
    monkeypatch.setattr(tables.ShardWriter.__init__, "__defaults__", (10, 5))  # shards of 10 rows, batches of 5
    counts = ingest_to(tmp_path, {"s": (DatasetEntry(file_name="d.jsonl"), file)})
    assert counts == {"rows": 24, "quarantined": 1, "by_source": {"s": {"rows_in": 25, "accepted": 24,
                                                                          "quarantined": 1, "records_in_files": 25,
                                                                          "num_samples": None}},
                      "quarantine_by_reason": {"not_an_object": 1}}
    shards = tables.table_files(tmp_path, "rows")
    assert [f.name for f in shards] == ["rows-00000.parquet", "rows-00001.parquet", "rows-00002.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in shards] == [10, 10, 4]
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in shards] == [2, 2, 1]  # record batches of 5
    ids = [r["row_id"] for r in tables.table_dicts(tmp_path, "rows")]
    assert ids == [f"s:{i}" for i in range(24)]  # in record order across the shards
    assert tables.read_table(tmp_path, "quarantine").to_pylist()[0]["reason"] == "not_an_object"
