"""One bad record never takes a stage down: it is quarantined with file, position and reason, the rest goes on."""

import json
import os

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.store import tables
from engine.data.ingest import ingest_source
from engine.data.registry import DatasetEntry, resolve_sources
from engine.errors import DataError

GOOD = {"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"}
GOOD_LINE = json.dumps(GOOD).encode()
DEEP = b"[" * 100_000 + b"]" * 100_000
POISON = {  # bytes of one JSON record -> the reason it is quarantined with
    b'{"instruction": "x", "output": NaN}': "non_finite_number",
    b'{"instruction": "x", "output": Infinity}': "non_finite_number",
    b'{"instruction": "x", "output": 1e999}': "non_finite_number",
    b'{"instruction": "x", "output": "y", "n": ' + b"7" * 5001 + b"}": "invalid_number",
    b'{"instruction": "x", "output": "y", "output": "z"}': "duplicate_key",
    b'{"instruction": "x", "output": "a\x01b"}': "control_character",
    b'{"instruction": "x", "output": "caf\xe9"}': "invalid_utf8",
    b'{"instruction": "x", "output": "\\ud800"}': "invalid_unicode",
    b'{"instruction": "\\udfff", "output": "y"}': "invalid_unicode",
    b'{"instruction": "x", "output": "y", "deep": ' + DEEP + b"}": "too_deeply_nested",
    b'{"instruction": "x", "output": tru}': "invalid_json",
}


def ingest_bytes(tmp_path, name, content, **entry):
    file = tmp_path / name
    file.write_bytes(content)
    return ingest_source("s", DatasetEntry(file_name=name, **entry), file)


def test_every_kind_of_bad_jsonl_line_is_quarantined_and_the_rest_goes_on(tmp_path):
    lines = [GOOD_LINE]
    for poison in POISON:
        lines += [poison, GOOD_LINE]
    rows, quarantine = ingest_bytes(tmp_path, "d.jsonl", b"\n".join(lines) + b"\n")
    assert len(rows) == len(POISON) + 1
    assert [q["reason"] for q in quarantine] == list(POISON.values())
    assert [q["row_id"] for q in quarantine] == [f"s:{2 * i + 1}" for i in range(len(POISON))]
    for i, q in enumerate(quarantine):  # the reader's findings name the file and line
        assert q["detail"].startswith(f"d.jsonl line {2 * i + 2}: "), q
    utf8 = next(q for q in quarantine if q["reason"] == "invalid_utf8")
    assert "byte" in utf8["detail"] and "\\xe9" in utf8["detail"]
    surrogate = next(q for q in quarantine if q["reason"] == "invalid_unicode")
    assert surrogate["detail"].endswith("output holds a lone surrogate that UTF-8 cannot encode")


def test_a_lone_surrogate_from_any_reader_is_refused_at_normalize():
    """Readers other than JSON's (a save_to_disk folder, a caller's records) meet the same check in normalize."""
    from engine.data.ingest import normalized_row
    from engine.data.readers import BadRow
    with pytest.raises(BadRow) as caught:
        normalized_row("s", DatasetEntry(file_name="x.parquet"), "s:0", {"instruction": "a\ud800", "output": "b"})
    assert caught.value.reason == "invalid_unicode" and caught.value.detail.startswith("messages[0].content")


def test_json_array_items_are_parsed_one_by_one(tmp_path):
    items = [GOOD_LINE, *POISON, GOOD_LINE]
    rows, quarantine = ingest_bytes(tmp_path, "d.json", b"[\n" + b",\n".join(items) + b"\n]\n")
    assert len(rows) == 2 and [r["row_id"] for r in rows] == ["s:0", f"s:{len(items) - 1}"]
    assert [q["reason"] for q in quarantine] == list(POISON.values())
    assert quarantine[0]["detail"].startswith("d.json item 1 (line 3 column 1): NaN is not a JSON number")
    utf8 = next(q for q in quarantine if q["reason"] == "invalid_utf8")
    assert utf8["detail"].endswith("byte 0xe9 is not UTF-8")


def test_a_json_array_whose_structure_breaks_stops_with_file_and_byte(tmp_path):
    file = tmp_path / "d.json"
    file.write_bytes(b"[" + GOOD_LINE + b", " + GOOD_LINE + b"] trailing")
    with pytest.raises(DataError, match=r"d.json: not a readable JSON document \(data after the array's closing '\]' "
                                        r"at line 1 column \d+\)"):
        ingest_source("s", DatasetEntry(file_name="d.json"), file)
    file.write_bytes(b"[" + GOOD_LINE + b', {"instruction": "unterminated')
    with pytest.raises(DataError, match=r"d.json: .*ends at line 1 column \d+ inside a string, in item 1"):
        ingest_source("s", DatasetEntry(file_name="d.json"), file)


def test_a_single_object_json_file_with_a_bad_value_is_one_quarantined_row(tmp_path):
    rows, quarantine = ingest_bytes(tmp_path, "one.json", b'{"instruction": "x", "output": NaN}')
    assert rows == [] and quarantine[0]["reason"] == "non_finite_number"
    with pytest.raises(DataError, match=r"one.json: not a readable JSON document .*line 1 column"):
        ingest_bytes(tmp_path, "one.json", b'{"instruction": ')


def test_csv_rows_with_bytes_that_are_not_utf8_are_quarantined(tmp_path):
    content = b"instruction,output\nAdd 1 + 2,3\ncaf\xe9,x\nUppercase abc,ABC\n"
    rows, quarantine = ingest_bytes(tmp_path, "d.csv", content)
    assert [r["row_id"] for r in rows] == ["s:0", "s:2"]
    assert quarantine == [{"source": "s", "row_id": "s:1", "stage": "ingest", "reason": "invalid_utf8",
                           "detail": "d.csv line 3: bytes that are not UTF-8"}]


def test_rows_with_lone_surrogates_never_reach_parquet(tmp_path):
    from engine.data.ingest import ingest_to
    file = tmp_path / "d.jsonl"
    file.write_bytes(GOOD_LINE + b'\n{"instruction": "\\ud800", "output": "y"}\n')
    counts = ingest_to(tmp_path, {"s": (DatasetEntry(file_name="d.jsonl"), file)})
    assert counts["rows"] == 1 and counts["quarantined"] == 1
    assert tables.read_table(tmp_path, "quarantine").to_pylist()[0]["reason"] == "invalid_unicode"


def registry_with_folder(tmp_path):
    data = tmp_path / "data"
    (data / "drop").mkdir(parents=True)
    (data / "drop" / "a.jsonl").write_bytes(GOOD_LINE + b"\n")
    (data / "datasets.yaml").write_text("d:\n  file_name: drop\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_bytes(GOOD_LINE + b"\n")
    return data, outside


def test_a_symlink_leaving_the_allowed_roots_is_refused_by_name(tmp_path):
    data, outside = registry_with_folder(tmp_path)
    link = data / "drop" / "nested" / "x.jsonl"
    link.parent.mkdir()
    link.symlink_to(outside / "secret.jsonl")
    with pytest.raises(DataError, match=r"drop/nested/x.jsonl: symbolic link to .*outside/secret.jsonl leaves"):
        resolve_sources(data, "datasets.yaml", [])
    sources = resolve_sources(data, "datasets.yaml", [], [str(outside)])  # allowed: read through the link
    rows, _ = ingest_source("d", *sources["d"])
    assert [r["row_id"] for r in rows] == ["d:a.jsonl:0", "d:nested/x.jsonl:0"]
    entry, path = sources["d"]
    (data / "drop" / "later.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")  # added after the recipe was checked
    (tmp_path / "elsewhere.jsonl").write_bytes(GOOD_LINE + b"\n")
    with pytest.raises(DataError, match="later.jsonl: symbolic link to"):
        ingest_source("d", entry, path)


def test_dangling_links_and_link_loops(tmp_path):
    data, _ = registry_with_folder(tmp_path)
    (data / "drop" / "loop").symlink_to(data / "drop")  # a loop inside the root: read once, never forever
    rows, _ = ingest_source("d", *resolve_sources(data, "datasets.yaml", [])["d"])
    assert len(rows) == 1
    (data / "drop" / "gone.jsonl").symlink_to(data / "missing.jsonl")
    with pytest.raises(DataError, match="gone.jsonl: symbolic link to .*missing.jsonl, which does not exist"):
        resolve_sources(data, "datasets.yaml", [])


# --- fuzz: random and poisoned records in every text format (about 9,500 rows over the three tests); nothing
# crashes, every raw row is kept or quarantined, and both tables can always be written to Parquet

texts = st.text(max_size=30) | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u2028", "日本語。", "\r\n"])
values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=8)
records = st.fixed_dictionaries({}, optional={"instruction": values | texts, "input": values, "output": values | texts,
                                              "conversations": values}) | values
record_bytes = (records.map(lambda r: json.dumps(r).encode())  # \ud800 is written as the JSON escape
                | records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                | st.sampled_from(list(POISON)) | st.just(GOOD_LINE))
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def assert_accounted_and_writable(tmp_path, rows, quarantine, raw):
    assert len(rows) + len(quarantine) == raw
    assert all(q["reason"] and q["detail"] for q in quarantine)
    tables.write_rows(rows, tmp_path / "rows.parquet", tables.ROW_COLUMNS)  # always valid UTF-8
    tables.write_rows(quarantine, tmp_path / "quarantine.parquet", tables.QUARANTINE_COLUMNS)


@FUZZ
@given(lines=st.lists(record_bytes | st.binary(min_size=1, max_size=40), min_size=15, max_size=50),
       sharegpt=st.booleans())
def test_fuzz_jsonl(tmp_path, lines, sharegpt):
    lines = [line.replace(b"\n", b" ") for line in lines if line.replace(b"\n", b" ").strip()]
    rows, quarantine = ingest_bytes(tmp_path, "f.jsonl", b"\n".join(lines) + b"\n",
                                    formatting="sharegpt" if sharegpt else "alpaca")
    assert_accounted_and_writable(tmp_path, rows, quarantine, len(lines))


@FUZZ
@given(items=st.lists(record_bytes, min_size=15, max_size=50), sharegpt=st.booleans())
def test_fuzz_json_array(tmp_path, items, sharegpt):
    rows, quarantine = ingest_bytes(tmp_path, "f.json", b"[" + b",".join(items) + b"]",
                                    formatting="sharegpt" if sharegpt else "alpaca")
    assert_accounted_and_writable(tmp_path, rows, quarantine, len(items))


cells = texts.filter(lambda t: "\x00" not in t) | st.binary(max_size=12).map(lambda b: b.decode("latin-1"))


@FUZZ
@given(cells=st.lists(st.tuples(cells, cells), min_size=15, max_size=50), raw_bytes=st.booleans())
def test_fuzz_csv(tmp_path, cells, raw_bytes):
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["instruction", "output"])
    writer.writerows(cells)
    content = buffer.getvalue().encode("utf-8", "surrogatepass")
    if raw_bytes:  # some cells' text as Latin-1 bytes: not UTF-8
        content = buffer.getvalue().encode("utf-8", "surrogatepass").replace("é".encode(), b"\xe9")
    file = tmp_path / "f.csv"
    file.write_bytes(content)
    raw = sum(1 for _ in csv.reader(io.StringIO(content.decode("utf-8", "surrogateescape"), newline=""))) - 1
    rows, quarantine = ingest_source("s", DatasetEntry(file_name="f.csv"), file)
    assert_accounted_and_writable(tmp_path, rows, quarantine, raw)


def test_fuzz_is_not_vacuous(tmp_path):
    """The poison really is poison: the same records through the fuzz path land in quarantine."""
    rows, quarantine = ingest_bytes(tmp_path, "p.jsonl", b"\n".join(POISON) + b"\n")
    assert rows == [] and len(quarantine) == len(POISON)
    assert os.path.getsize(tmp_path / "p.jsonl") > len(DEEP)


def test_a_corrupt_parquet_file_stops_with_its_name(tmp_path):
    import pyarrow as pa
    file = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD] * 3), file)
    data = file.read_bytes()
    file.write_bytes(data[:4] + b"\0" * (len(data) - 8) + data[-4:])  # magic bytes kept, everything else zeroed
    with pytest.raises(DataError, match="d.parquet: not a readable Parquet file"):
        ingest_source("s", DatasetEntry(file_name="d.parquet"), file)


def outcome(file, block_size):
    from engine.data.readers import BadRow, array_items
    with file.open("rb") as handle:
        try:
            return [(i, (v.reason, v.detail) if isinstance(v, BadRow) else v)
                    for i, v in array_items(handle, file, block_size)]
        except DataError as exc:
            return str(exc)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=st.lists(record_bytes.filter(lambda b: len(b) < 1000), max_size=8), tail=st.sampled_from([b"]", b"] x", b""]))
def test_json_array_items_do_not_depend_on_block_boundaries(tmp_path, items, tail):
    file = tmp_path / "b.json"
    file.write_bytes(b"[\n" + b",\n".join(items) + b"\n" + tail)
    expected = outcome(file, 1 << 20)
    for block_size in (1, 3, 16):
        assert outcome(file, block_size) == expected
