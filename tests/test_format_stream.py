"""formatted_data streams: the rows are read from clean_data's table a batch at a time and the views written as
they come back, so the files are the same bytes for any batch size and any number of workers, whether the rows
come as a list or from the table, and the peak memory of formatting 4N rows is about that of N rows."""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from engine.data.format import TableRows, format_rows, with_default_system
from engine.models.load import load_tokenizer
from engine.store.tables import ROW_COLUMNS, ShardWriter

from test_format_parallel import generated_rows

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are Tuney."


def files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def write_clean(rows: list[dict], folder: Path, shard_rows: int = 10_000) -> Path:
    folder.mkdir(parents=True)
    with ShardWriter(folder, "rows", ROW_COLUMNS, shard_rows=shard_rows, batch_rows=17) as writer:
        writer.add_all(rows)
    return folder


def test_the_files_are_the_same_for_any_batch_size_workers_and_source(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = generated_rows() * 3  # repeated rows: exact copies leak into eval, near ones too
    rows = [{**r, "row_id": f"{r['row_id']}:{i}", "content_hash": f"{r['content_hash']}:{i}"}
            for i, r in enumerate(rows)]
    clean = write_clean(rows, tmp_path / "clean", shard_rows=50)  # several shards
    seen = {}
    for batch_rows in (7, 1000):
        for workers in (1, 2):
            out = tmp_path / f"list-{batch_rows}-{workers}"
            quarantine, report = format_rows(with_default_system(rows, SYSTEM), tokenizer, 96, 0.3, 0, out, 0.8,
                                             workers=workers, batch_rows=batch_rows)
            seen[out.name] = (files(out), json.dumps(quarantine), json.dumps(report))
            out = tmp_path / f"table-{batch_rows}-{workers}"
            _, table_report = format_rows(TableRows(clean, "rows", SYSTEM), tokenizer, 96, 0.3, 0, out, 0.8,
                                          workers=workers, batch_rows=batch_rows, quarantine_to=out)
            assert json.dumps(table_report) == json.dumps(report)
            seen[out.name] = files(out)
    first = seen["list-7-1"]
    assert report["contaminates_eval"] > 0 and report["truncated"] > 0 and json.loads(first[1])
    assert {"sft/train/data-00000-of-00001.arrow", "sft/train/state.json", "kto/eval/dataset_info.json",
            "splits-00000.parquet"} <= set(first[0])
    assert all(v == first for k, v in seen.items() if k.startswith("list"))
    tables = [v for k, v in seen.items() if k.startswith("table")]
    assert all(t == tables[0] for t in tables)
    assert {k: v for k, v in tables[0].items() if not k.startswith("quarantine")} == first[0]


PEAK = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from engine.data.format import TableRows, format_rows
from engine.models.load import load_tokenizer
work = Path(sys.argv[1])
_, report = format_rows(TableRows(work / "clean", "rows"), load_tokenizer({model!r}), 256, 0.1, 0, work / "out", 0.8,
                        workers=1, quarantine_to=work / "out")
line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
print(json.dumps({{"peak": int(line.split()[1]) * 1024, "rows": report["sft_train"] + report["sft_eval"]}}))
"""


def sft_rows(n: int) -> list[dict]:
    """n distinct SFT rows of 120 words drawn (seeded per row) from 3,000 made-up words."""
    words = [f"w{k}" for k in range(3000)]
    rows = []
    for i in range(n):
        text = " ".join(random.Random(i).choices(words, k=120))
        rows.append({"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "kind": "sft", "format": "alpaca",
                     "messages": json.dumps([{"role": "user", "content": text[:300]},
                                             {"role": "assistant", "content": text}])})
    return rows


def peak_of_formatting(n: int, tiny_model_dir: Path, work: Path) -> tuple[int, int]:
    """(peak RSS in bytes, rows formatted) of a fresh process formatting n rows from a clean_data table."""
    write_clean(sft_rows(n), work / "clean", shard_rows=2000)
    # one tokenizer thread and two malloc arenas: the peak then does not depend on how busy the machine is
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", PEAK.format(root=str(ROOT), model=str(tiny_model_dir)), str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["peak"], result["rows"]


def test_peak_memory_stays_flat_from_n_to_4n_rows(tiny_model_dir, tmp_path):
    """Formatting 4N rows in one process peaks within a few MB of N rows (the in-memory formatting held every row,
    its tokens and the views' tables: hundreds of MB more for 3N more rows of this size). What grows with the rows is
    decontamination's: the MinHash signatures (512 bytes a row), the LSH arrays and the eval rows' ids."""
    n = 2500
    small, rows_small = peak_of_formatting(n, tiny_model_dir, tmp_path / "n")
    large, rows_large = peak_of_formatting(4 * n, tiny_model_dir, tmp_path / "4n")
    assert rows_small > 0.9 * n and rows_large > 0.9 * 4 * n
    # signatures and LSH arrays grow ~5 MB; the in-memory formatting grew hundreds of MB
    assert large - small < 30 * 2 ** 20, (small / 2 ** 20, large / 2 ** 20)


def test_decontamination_past_memory_gb_finds_the_same_leaks_through_spilled_files(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    """Past data.memory_gb decontamination's signatures go through dedup_spill's files on disk, read from clean_data's
    shards in small batches: the same leaks, the same files and report as in memory, and the spill directory gone."""
    from engine.data import format as format_module
    from engine.data.dedup import near_duplicate_clusters
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = generated_rows() * 3
    rows = [{**r, "row_id": f"{r['row_id']}:{i}", "content_hash": f"{r['content_hash']}:{i}"}
            for i, r in enumerate(rows)]
    clean = write_clean(rows, tmp_path / "clean", shard_rows=13)
    spilled = []
    monkeypatch.setattr(format_module, "near_duplicate_clusters",
                        lambda *a, **k: spilled.append(k) or near_duplicate_clusters(*a, **k))
    seen = {}
    for memory_gb in (None, 4.0, 1e-6):  # 1e-6 GB: every signature spills
        out = tmp_path / f"out-{memory_gb}"
        _, report = format_rows(TableRows(clean, "rows", SYSTEM), tokenizer, 96, 0.3, 0, out, 0.8, workers=2,
                                batch_rows=10, quarantine_to=out, memory_gb=memory_gb)
        assert len(spilled) == (memory_gb == 1e-6)
        assert not list(out.glob(".dedup-spill-*"))
        seen[memory_gb] = (files(out), json.dumps(report))
    assert json.loads(seen[None][1])["contaminates_eval"] > 0
    assert seen[None] == seen[4.0] == seen[1e-6]
