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
import json, sys, threading
from pathlib import Path
sys.path.insert(0, {root!r})
from engine.data import written_views
from engine.data.written_rows import exact_duplicates
from engine.data.written_views import answers_by_row, decoded_row_ids, label_problems, sft_lengths, view_splits
from engine.models.load import load_tokenizer
written_views.CHECKED_ROWS = 2000  # N rows are several batches too
peak, done = [0], threading.Event()


def sample():  # the peak of anonymous memory: VmHWM counts the written views' pages the checks map and read too
    while not done.wait(0.005):
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssAnon:"))
        peak[0] = max(peak[0], int(line.split()[1]) * 1024)


threading.Thread(target=sample, daemon=True).start()
work = Path(sys.argv[1])
rows, duplicates, _ = exact_duplicates(work / "clean", memory_gb=0.25)
splits = view_splits(work / "out", "sft")
answers = answers_by_row(work / "clean", "sft", decoded_row_ids(splits))
checked, decoded, problems = label_problems(splits, answers, load_tokenizer({model!r}), 256, False)
lengths = sft_lengths(splits, 256)
done.set()
print(json.dumps({{"peak": peak[0], "rows": rows, "duplicates": duplicates, "checked": checked,
                  "decoded": decoded, "problems": len(problems), "answers": len(answers), "over": lengths[2]}}))
"""


def judged(n: int, tiny_model_dir: Path, work: Path) -> dict:
    """The checks' findings and the peak anonymous memory (bytes) of a fresh process judging n written rows."""
    write_clean(sft_rows(n), work / "clean", shard_rows=2000)
    format_rows(TableRows(work / "clean", "rows"), load_tokenizer(tiny_model_dir), 256, 0.1, 0, work / "out", 0.8,
                workers=1, quarantine_to=work / "out")
    # one tokenizer thread, one DuckDB thread's worth of arenas: the peak does not depend on how busy the machine is
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", JUDGE.format(root=str(ROOT), model=str(tiny_model_dir)), str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_judging_4n_rows_peaks_where_n_rows_do(tiny_model_dir, tmp_path):
    """The checks held a dict of every written row's hash, of every row's answers and a list of every length:
    32 MB more anonymous memory for 3N more rows (measured: 345 MB, 378 MB); now a batch of rows, the hashes on disk
    for DuckDB and the answers of the rows decoded (at most 512 a split): 366 MB, 373 MB."""
    n = 10_000
    small = judged(n, tiny_model_dir, tmp_path / "n")
    large = judged(4 * n, tiny_model_dir, tmp_path / "4n")
    for found, rows in ((small, n), (large, 4 * n)):
        assert found["rows"] == rows and found["duplicates"] == 0 and found["problems"] == 0
        assert found["checked"] > 0.95 * rows and found["over"] == 0
        assert 0 < found["answers"] <= found["decoded"] <= 2 * 512
    assert large["peak"] - small["peak"] < 18 * 2 ** 20, (small["peak"] / 2 ** 20, large["peak"] / 2 ** 20)
