"""The data checks read the written rows back a batch at a time: judging 4N rows peaks where judging N rows does
(clean_data's no_exact_duplicates, formatted_data's labels_are_the_answers and lengths_within_cutoff)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.data.format import TableRows, format_rows
from engine.models.load import load_tokenizer

from test_format_stream import sft_rows, write_clean

ROOT = Path(__file__).resolve().parent.parent

JUDGE = """
import json, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, {root!r})
import pyarrow as pa
from engine.data import written_views
from engine.data.written_rows import exact_duplicates
from engine.data.written_views import answers_by_row, decoded_row_ids, label_problems, sft_lengths, view_splits
from engine.models.load import load_tokenizer
written_views.CHECKED_ROWS = 2000  # N rows are several batches too
tokenizer = load_tokenizer({model!r})
tracemalloc.start()  # Python objects and numpy arrays, to the byte: no sampling, whatever else the machine runs
work = Path(sys.argv[1])
rows, duplicates, _ = exact_duplicates(work / "clean", memory_gb=0.25)
splits = view_splits(work / "out", "sft")
answers = answers_by_row(work / "clean", "sft", decoded_row_ids(splits))
checked, decoded, problems = label_problems(splits, answers, tokenizer, 256, False)
lengths = sft_lengths(splits, 256)
print(json.dumps({{"python": tracemalloc.get_traced_memory()[1], "arrow": pa.default_memory_pool().max_memory(),
                  "rows": rows, "duplicates": duplicates, "checked": checked, "decoded": decoded,
                  "problems": len(problems), "answers": len(answers), "over": lengths[2]}}))
"""


def judged(n: int, tiny_model_dir: Path, work: Path) -> dict:
    """The checks' findings and the peaks (bytes) of Python's and Arrow's allocations in a fresh process judging n
    written rows (the written views are memory-mapped: their pages are the page cache's, not the checks')."""
    write_clean(sft_rows(n), work / "clean", shard_rows=2000)
    format_rows(TableRows(work / "clean", "rows"), load_tokenizer(tiny_model_dir), 256, 0.1, 0, work / "out", 0.8,
                workers=1, quarantine_to=work / "out")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", JUDGE.format(root=str(ROOT), model=str(tiny_model_dir)), str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_judging_4n_rows_peaks_where_n_rows_do(tiny_model_dir, tmp_path):
    """The checks held a dict of every written row's hash, of every row's answers and a list of every length:
    their Python allocations peaked at 14 MB for N rows, 47 MB for 4N (measured); now a batch of rows, the hashes
    on disk for DuckDB and the answers of the rows decoded (at most 512 a split): 4.3 MB for both, Arrow's 9.8 MB."""
    n = 10_000
    small = judged(n, tiny_model_dir, tmp_path / "n")
    large = judged(4 * n, tiny_model_dir, tmp_path / "4n")
    for found, rows in ((small, n), (large, 4 * n)):
        assert found["rows"] == rows and found["duplicates"] == 0 and found["problems"] == 0
        assert found["checked"] > 0.95 * rows and found["over"] == 0
        assert 0 < found["answers"] <= found["decoded"] <= 2 * 512
    peaks = [(f["python"] / 2 ** 20, f["arrow"] / 2 ** 20) for f in (small, large)]
    assert large["python"] - small["python"] < 4 * 2 ** 20 and large["arrow"] - small["arrow"] < 4 * 2 ** 20, peaks
