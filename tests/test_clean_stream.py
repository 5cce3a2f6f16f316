"""clean_data's streamed local engine (engine/data/clean_stream.py) writes the same four tables, byte for byte, and
the same report as the in-memory `clean()`, for any batch size and number of workers, in raw's order or sorted by
DuckDB; and its memory does not grow with the corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter

from engine.data.clean import clean, corpus_order
from engine.data.clean_stage import write_result
from engine.data.clean_stream import StreamClean, stream_clean
from engine.data.ingest import ingest
from engine.data.registry import resolve_sources
from engine.recipe import CleanSection, CleanStep
from engine.store.tables import ROW_COLUMNS, ShardWriter, table_files

STOCK = "tests/fixtures/llamafactory/data"
SELECTED = ["alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo"]
STEPS = [{"step": "normalize"}, {"step": "strip_html"}, {"step": "length", "min_chars": 40, "max_chars": 3000},
         {"step": "repetition"}, {"step": "exact_dedup"}, {"step": "pii"},
         {"step": "blocklist", "words": ["the cat", "Python"]}, {"step": "near_dedup", "threshold": 0.5}]
TABLES = ("rows", "quarantine", "clusters", "rewrites")


def section(steps=STEPS) -> CleanSection:
    return CleanSection(steps=[TypeAdapter(CleanStep).validate_python(s) for s in steps])


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The demo files' rows, with planted exact copies, near copies (a word changed), CRLF, HTML and an e-mail,
    written as raw_data's shards of 150 rows in SELECTED's order (another order sorts with DuckDB)."""
    rows, quarantined, _ = ingest(resolve_sources(STOCK, "dataset_info.json", SELECTED))
    assert quarantined == []
    planted = []
    for i, r in enumerate(rows[:300:7]):
        head = r["row_id"].rsplit(":", 1)[0]
        planted.append(dict(r, row_id=f"{head}:{100_000 + i}"))
        messages = json.loads(r["messages"])
        if i % 3 == 0:
            messages[-1]["content"] = messages[-1]["content"].replace(" ", "\r\n", 1) + " <b>see</b> a@b.org"
        elif i % 3 == 1:
            messages[-1]["content"] += " also"
        planted.append(dict(r, row_id=f"{head}:{200_000 + i}", messages=json.dumps(messages, ensure_ascii=False)))
    folder = tmp_path_factory.mktemp("raw")
    with ShardWriter(folder, "rows", ROW_COLUMNS, shard_rows=150) as table:
        table.add_all(sorted(rows + planted, key=corpus_order(SELECTED)))  # in SELECTED's order: read as it is
    return folder


def tables_bytes(folder) -> dict[str, list[bytes]]:
    return {name: [f.read_bytes() for f in table_files(folder, name)] for name in TABLES}


@pytest.mark.parametrize("source_order", [SELECTED, SELECTED[::-1]], ids=["in-order", "duckdb-sort"])
def test_streamed_tables_and_report_are_the_in_memory_ones(raw, tmp_path, source_order):
    rows = [r for f in table_files(raw, "rows") for r in pq.read_table(f).to_pylist()]
    memory = tmp_path / "memory"
    memory.mkdir()
    report = write_result(memory, clean(rows, section(), source_order))
    assert {"exact_duplicate", "near_duplicate", "blocklisted"} <= set(report["quarantine_by_reason"])
    assert report["rewritten_by_step"].keys() >= {"normalize", "strip_html", "pii"}
    expected = tables_bytes(memory)
    for batch_rows, workers in ((7, 1), (64, 2), (10_000, 1)):
        out = tmp_path / f"stream-{batch_rows}-{workers}"
        out.mkdir()
        streamed = stream_clean(raw, out, section(), source_order, memory_gb=0.001, work_dir=out,
                                batch_rows=batch_rows, workers=workers)
        assert json.dumps(streamed) == json.dumps(report), (batch_rows, workers)
        got = tables_bytes(out)
        for name in TABLES:
            assert got[name] == expected[name], (name, batch_rows, workers)
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # the part files are gone


def test_a_dedup_first_and_no_steps_give_the_in_memory_result(raw, tmp_path, monkeypatch):
    rows = [r for f in table_files(raw, "rows") for r in pq.read_table(f).to_pylist()]
    parts_at_exact, exact = [], StreamClean.exact

    def recorded(self, part, step, first):
        parts_at_exact.append(sorted(p.name for p in self.work.glob("part-*.parquet")))
        return exact(self, part, step, first)
    monkeypatch.setattr(StreamClean, "exact", recorded)
    for n, steps in enumerate(([{"step": "near_dedup"}, {"step": "exact_dedup"}], [])):
        memory, out = tmp_path / f"m{n}", tmp_path / f"s{n}"
        memory.mkdir(), out.mkdir()
        report = write_result(memory, clean(rows, section(steps), SELECTED[::-1]))
        assert json.dumps(stream_clean(raw, out, section(steps), SELECTED[::-1], batch_rows=50)) == json.dumps(report)
        assert tables_bytes(out) == tables_bytes(memory)
    # raw's ordered rows, written for near_dedup, are removed once it has read them: at 10M rows, a corpus of disk
    assert parts_at_exact == [["part-2.parquet"]]



def test_a_step_that_fails_leaves_no_file_open(raw, tmp_path, monkeypatch):
    open_when_failing = []

    def failing(self, part, step, first):
        open_when_failing.append(self.records.quarantine.writer.is_open)  # the length step quarantined rows before
        raise RuntimeError("planted")
    monkeypatch.setattr(StreamClean, "exact", failing)
    with pytest.raises(RuntimeError, match="planted") as failure:  # its traceback held, as a caller's log holds it
        stream_clean(raw, tmp_path, section(), SELECTED, work_dir=tmp_path, batch_rows=50)
    assert failure.traceback and open_when_failing == [True]
    fds = Path("/proc/self/fd")
    assert [link for fd in fds.iterdir() if str(tmp_path) in (link := os.readlink(fd) if fd.exists() else "")] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

MEASURE = """
import json, resource, sys, tempfile
from pathlib import Path
from engine.data.clean_stream import stream_clean
from engine.recipe import CleanSection
from engine.store.tables import ROW_COLUMNS, ShardWriter
n = int(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    raw, out = Path(tmp) / "raw", Path(tmp) / "out"
    raw.mkdir(), out.mkdir()
    with ShardWriter(raw, "rows", ROW_COLUMNS) as table:
        for i in range(n):
            text = " ".join(f"w{(i * 7 + j) % 5003}" for j in range(60))
            table.add({"source": "s", "row_id": f"s:{i}", "content_hash": "", "format": "alpaca", "kind": "sft",
                       "messages": json.dumps([{"role": "user", "content": f"question {i % (n // 2)}"},
                                               {"role": "assistant", "content": text}]),
                       "chosen": None, "rejected": None, "tools": None, "label": None})
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = CleanSection.model_validate({"steps": [{"step": "normalize"}, {"step": "exact_dedup"},
                                                 {"step": "near_dedup"}]})
    report = stream_clean(raw, out, cfg, ["s"], memory_gb=0.05, work_dir=out, batch_rows=2000)
    print(json.dumps({"growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start,
                      "rows_out": report["rows_out"]}))
"""


def test_memory_does_not_grow_with_the_corpus():
    def growth(n: int) -> int:
        done = subprocess.run([sys.executable, "-c", MEASURE, str(n)], capture_output=True, text=True, timeout=240,
                              check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        assert 0 < figures["rows_out"] < n
        return figures["growth_kb"]
    small, large = growth(10_000), growth(40_000)
    assert large - small < 30 * 1024, (small, large)
