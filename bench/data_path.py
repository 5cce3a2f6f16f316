"""The data path at scale: raw_data, clean_data and formatted_data per stage, against LLaMA-Factory's tokenization.

Generates N alpaca records as JSON lines, streamed to the file 50,000 at a time (seeded; instruction 8-25 words,
an input on 40% of them, answers of 30-250 words drawn from a Zipf vocabulary of 20,000 made-up words; 12% planted
copies of earlier rows: exact, whitespace-only and near, 4% each) into a registry of their own, and a byte-level BPE
tokenizer (32,000 tokens, ChatML template: engine.models.load.train_tokenizer) trained on a sample of them. Then, each stage
of each setup in a fresh process of its own (peak RSS: that stage's alone, its pool workers' included, sampled every
0.1 s), prints rows/s and peak RSS per stage for:
  local 1:    the stages' entry code (engine.data.ingest.ingest_to, engine.data.clean_stream.stream_clean with
              the default clean steps, engine.data.format.format_rows with decontamination at 0.8, streaming
              clean_data's table as formatted_data does; data.memory_gb 4) in one process;
  local all:  the same with clean_data's and formatted_data's workers on every core
              (data.preprocessing_num_workers unset); raw_data runs in one process either way;
  ray:        data.engine=ray where the recipe has the key and ray imports; else "ray: not built" / "ray: not
              installed" (issue 24 item 4);
  LF map:     LLaMA-Factory's SupervisedDatasetProcessor tokenization (src/llamafactory/data/processor/
              supervised.py: per row, each turn's rendered prompt and answer encoded with tokenizer.encode, cut by
              infer_seqlen, input_ids/attention_mask/labels) through datasets.map(batched=True, batch_size=1000,
              num_proc=1, and again with num_proc = every core: the peer at its best) with the same fast tokenizer
              and the same ChatML rendering, over rows already aligned (LF's converter step is not timed).
cutoff_len is 1024 on every side. Prints the ratios against each baseline, naming it (the issue's goals
are against num_proc=1: whole local data path <= 1.3x LF map alone; formatted_data >= 2x as fast) and whether
local 1 and local all wrote the same view files.

With --work DIR, each size's data and results are kept in DIR/rows-N (results.json, written as each stage ends) and
a later invocation with the same DIR resumes: the data is not generated again and a stage already measured is not
run again (10M rows take longer than one sitting); the report names the invocations its figures come from. Outputs
are removed once no later stage reads them (a formatted_data's files after their digest), so 10M rows fit the disk.

Usage: .venv/bin/python bench/data_path.py [--rows 100000 200000 1000000 10000000] [--work DIR]
                                          [--stages formatted] [--setups local1 localall lf1 lfall]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime.pool import usable_cores  # noqa: E402  # the cores Ray and the pools use

CUTOFF_LEN = 1024
SOURCE = "alpaca_bench"
DATA_FILE = "alpaca.jsonl"
CORES = usable_cores()
SETUPS = {"local1": "local 1 process", "localall": f"local {CORES} cores", "ray": "ray",
          "lf1": "LF map num_proc=1", "lfall": f"LF map num_proc={CORES}"}
STAGES = ("raw", "clean", "formatted")
MEMORY_GB = 4.0  # data.memory_gb's default: dedup and decontamination spill to disk past it


def generate(n: int, path: Path, seed: int = 7, chunk: int = 50_000) -> None:
    """n alpaca records as JSON lines at `path`, generated and written `chunk` rows at a time (memory stays bounded
    for 10M rows; the rows depend on the chunk size, which is fixed), with planted copies of earlier rows of the
    chunk: 4% exact, 4% differing in whitespace only, 4% near (PLANTED)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    freq = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5,
                     1.0, 0.8, 0.2, 0.2, 0.1, 0.1, 0.07])
    vocab = np.array(["".join(rng.choice(letters, rng.integers(1, 10), p=freq / freq.sum())) for _ in range(20000)])
    zipf = 1 / np.arange(1, len(vocab) + 1)
    with path.open("w") as out:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            lengths = np.stack([rng.integers(8, 26, m), np.where(rng.random(m) < 0.4, rng.integers(5, 41, m), 0),
                                rng.integers(30, 251, m)], axis=1)
            words = vocab[rng.choice(len(vocab), int(lengths.sum()), p=zipf / zipf.sum())]
            at, rows = 0, []
            for row in lengths:
                texts = []
                for length in row:
                    texts.append((" ".join(words[at:at + length]).capitalize() + ".") if length else "")
                    at += length
                rows.append(texts)
            for i, (draw, of) in enumerate(zip(rng.random(m), rng.integers(0, np.maximum(np.arange(m), 1)))):
                if i and draw < PLANTED["near"]:  # an earlier row of the chunk again, as a copy
                    rows[i] = planted_copy(rows[of], draw, vocab, rng)
            for texts in rows:
                out.write(json.dumps({"instruction": texts[0], "input": texts[1], "output": texts[2]}) + "\n")


PLANTED = {"exact": 0.04, "spaces": 0.08, "near": 0.12}  # cumulative shares: exact, whitespace-only, near copies


def planted_copy(texts: list[str], draw: float, vocab: np.ndarray, rng) -> list[str]:
    """A copy of a row: the same texts (exact_dedup removes it), its output's spaces doubled (exact_dedup's
    whitespace-blind key removes it), or its output with 3 words replaced (a near copy: near_dedup's, where on)."""
    if draw < PLANTED["exact"]:
        return list(texts)
    if draw < PLANTED["spaces"]:
        return [texts[0], texts[1], texts[2].replace(" ", "  ")]
    words = texts[2].split(" ")
    for at in rng.integers(0, len(words), 3):
        words[at] = vocab[rng.integers(0, len(vocab))]
    return [texts[0], texts[1], " ".join(words)]


def sample_records(path: Path, n: int) -> Iterator[dict]:
    with path.open() as lines:
        for line, _ in zip(lines, range(n)):
            yield json.loads(line)


def prepare(work: Path, n: int) -> None:
    from engine.models.load import train_tokenizer
    data = work / "data"
    data.mkdir(parents=True)
    generate(n, data / DATA_FILE)
    (data / "datasets.yaml").write_text(f"{SOURCE}:\n  file_name: {DATA_FILE}\n  formatting: alpaca\n")
    sample = sample_records(data / DATA_FILE, 20000)
    train_tokenizer([f"{r['instruction']} {r['input']} {r['output']}" for r in sample], 32000).save_pretrained(
        work / "tokenizer")


def ray_status() -> str | None:
    """None when this checkout can run data.engine=ray (the recipe has the key and ray imports), else why not."""
    from engine.recipe.data import DataSection
    if "engine" not in DataSection.model_fields:
        return "not built"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "not installed"
    return None


def run_stage(setup: str, stage: str, work: Path) -> dict:
    """One stage of one setup, in this (fresh) process: {rows, seconds}."""
    from engine.store.tables import table_rows
    from engine.runtime.pool import worker_count
    out = work / setup / stage
    shutil.rmtree(out, ignore_errors=True)  # what a killed run of this stage left
    out.mkdir(parents=True)
    if stage == "raw":
        from engine.data.ingest import ingest_to
        from engine.data.registry import resolve_sources
        start = time.perf_counter()
        ingest_to(out, resolve_sources(work / "data", "datasets.yaml", [SOURCE]))
        seconds = time.perf_counter() - start
        return {"rows": table_rows(out, "rows") + table_rows(out, "quarantine"), "seconds": seconds}
    if stage == "clean":  # clean_data's code for each engine (engine/data/clean_stage.py), its tables as shards
        from engine.data.clean_stream import stream_clean
        from engine.data.ray_engine import connected, ray_clean, require_ray
        from engine.recipe.clean import CleanSection
        from engine.store.tables import table_files
        raw = input_of(setup, "raw", work)
        if setup == "ray":  # a local Ray of every core, started before the clock (on a cluster it is running)
            connected(require_ray(), None)
        start = time.perf_counter()
        if setup == "ray":
            ray_clean(table_files(raw, "rows"), out, CleanSection(), [SOURCE], memory_gb=MEMORY_GB, work_dir=out)
            workers = CORES
        else:
            workers = 1 if setup == "local1" else worker_count(None, table_rows(raw, "rows"))
            stream_clean(raw, out, CleanSection(), [SOURCE], memory_gb=MEMORY_GB, work_dir=out, workers=workers)
        return {"rows": table_rows(raw, "rows"), "seconds": time.perf_counter() - start, "workers": workers}
    from engine.models.load import load_tokenizer
    tokenizer = load_tokenizer(work / "tokenizer")
    if setup in ("lf1", "lfall"):
        return lf_map(work, tokenizer, 1 if setup == "lf1" else CORES)
    from engine.data.format import TableRows, format_rows
    clean = input_of(setup, "clean", work)
    start = time.perf_counter()
    rows = table_rows(clean, "rows")
    workers = 1 if setup == "local1" else worker_count(None, rows)
    # as formatted_data runs: clean_data's rows streamed from its table, the quarantine written beside the views
    format_rows(TableRows(clean, "rows"), tokenizer, CUTOFF_LEN, 0.1, 42, out, 0.8, "truncate", workers,
                quarantine_to=out, memory_gb=MEMORY_GB)
    return {"rows": rows, "seconds": time.perf_counter() - start, "workers": workers}


def input_of(setup: str, stage: str, work: Path) -> Path:
    """The `stage` output a setup's next stage reads: its own, or local 1's where the setup did not run `stage`;
    only a whole one (its run finished: done_mark)."""
    for owner in (setup, "local1"):
        if done_mark(work, owner, stage).exists():
            return work / owner / stage
    raise FileNotFoundError(f"{setup} {stage}: no finished output in {work / setup} or {work / 'local1'}")


def done_mark(work: Path, setup: str, stage: str) -> Path:
    """Beside a stage's output folder (not in it: formatted's files are digested), written once its run finished."""
    return work / setup / f"{stage}.done"


def lf_map(work: Path, tokenizer, num_proc: int) -> dict:
    """LLaMA-Factory's supervised preprocessing (see the module docstring) over the generated rows on `num_proc`
    processes, timed from the aligned dataset to the tokenized one."""
    from datasets import disable_caching, load_dataset

    from engine.data.format import infer_seqlen
    disable_caching()  # map's outputs still go to temp files: here under work/, removed when the stage is done
    cache = work / "lf-cache"
    shutil.rmtree(cache, ignore_errors=True)  # what a killed run left
    (cache / "tmp").mkdir(parents=True)
    tempfile.tempdir = str(cache / "tmp")
    records = load_dataset("json", data_files=str(work / "data" / DATA_FILE), split="train", cache_dir=str(cache))

    def align(batch):  # LF's converter output: _prompt (user turns), _response (one answer); not timed
        return {"_prompt": [[{"role": "user", "content": i + ("\n" + x if x else "")}]
                            for i, x in zip(batch["instruction"], batch["input"], strict=True)],
                "_response": [[{"role": "assistant", "content": o}] for o in batch["output"]]}
    aligned = records.map(align, batched=True, remove_columns=records.column_names, num_proc=num_proc)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # LF's qwen-style default system slot

    def preprocess_dataset(examples):  # SupervisedDatasetProcessor.preprocess_dataset, text-only, no mask_history
        model_inputs = {"input_ids": [], "attention_mask": [], "labels": []}
        for prompt, response in zip(examples["_prompt"], examples["_response"], strict=True):
            messages = prompt + response
            input_ids, labels, total_length = [], [], 0
            for i in range(0, len(messages), 2):  # encode_multiturn: (source, target) ids per turn
                source = (system if i == 0 else "") + f"<|im_start|>user\n{messages[i]['content']}<|im_end|>\n" \
                    "<|im_start|>assistant\n"
                source_ids = tokenizer.encode(source, add_special_tokens=False)
                target_ids = tokenizer.encode(f"{messages[i + 1]['content']}<|im_end|>\n", add_special_tokens=False)
                if total_length >= CUTOFF_LEN:
                    break
                source_len, target_len = infer_seqlen(len(source_ids), len(target_ids), CUTOFF_LEN - total_length)
                source_ids, target_ids = source_ids[:source_len], target_ids[:target_len]
                total_length += source_len + target_len
                input_ids += source_ids + target_ids
                labels += [-100] * source_len + target_ids
            model_inputs["input_ids"].append(input_ids)
            model_inputs["attention_mask"].append([1] * len(input_ids))
            model_inputs["labels"].append(labels)
        return model_inputs

    start = time.perf_counter()
    tokenized = aligned.map(preprocess_dataset, batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                            remove_columns=aligned.column_names, load_from_cache_file=False)
    figures = {"rows": len(tokenized), "seconds": time.perf_counter() - start, "disk_mb": disk_mb(cache)}
    shutil.rmtree(cache)
    return figures


def disk_mb(folder: Path) -> float:
    """The bytes of the files under `folder`, in MB (a stage's output, or LF's Arrow caches: the disk a size needs)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def high_water_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits from its parent)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


class TreeMemory:
    """The peak of this process's RSS plus its workers', sampled every 0.1 s while inside (a pool's workers have no
    high-water mark the parent can read after they exit); and the peak of their PSS summed, which counts a page that
    several processes map once (Ray's object store in shared memory: the RSS sum counts it per worker)."""

    def __enter__(self):
        import psutil
        self.peak, self.peak_pss, self.done = 0.0, 0.0, threading.Event()
        me = psutil.Process()

        def sample():
            while not self.done.wait(0.1):
                rss = pss = 0
                for proc in [me, *me.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss += proc.memory_info().rss
                    with contextlib.suppress(psutil.Error):  # smaps_rollup (~0.1 ms) may be denied where RSS is not
                        pss += proc.memory_full_info().pss
                self.peak = max(self.peak, rss / 2**20)
                self.peak_pss = max(self.peak_pss, pss / 2**20)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def child(setup: str, stage: str, work: Path) -> None:
    with TreeMemory() as tree:
        result = run_stage(setup, stage, work)
    result["peak_rss_mb"] = max(high_water_mb(), tree.peak)
    result["peak_pss_mb"] = tree.peak_pss
    print("RESULT " + json.dumps(result), flush=True)


def in_fresh_process(setup: str, stage: str, work: Path) -> dict:
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, __file__, "--child", setup, stage, "--work", str(work)], env=env,
                          capture_output=True, text=True, timeout=7200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{setup} {stage} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def digest(out: Path) -> str:
    """sha256 over every file formatted_data wrote (the views, splits.parquet, the quarantine), in path order."""
    sha = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                sha.update(chunk)
    return sha.hexdigest()


class Results:
    """Each (setup, stage)'s figures, kept in work/results.json as each stage ends (with --work: a later invocation
    reads them back and runs only what is missing), and the invocations (start times) they come from."""

    def __init__(self, work: Path):
        self.path = work / "results.json"
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.invocation = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.figures: dict[str, dict] = saved.get("figures", {})

    def get(self, setup: str, stage: str) -> dict | None:
        return self.figures.get(f"{setup}/{stage}")

    def put(self, setup: str, stage: str, figures: dict) -> None:
        self.figures[f"{setup}/{stage}"] = {**figures, "invocation": self.invocation}
        partial = self.path.with_suffix(".partial")  # whole or not at all: a killed run leaves the last complete file
        partial.write_text(json.dumps({"figures": self.figures}, indent=1))
        partial.replace(self.path)

    def invocations(self) -> list[str]:
        return sorted({f["invocation"] for f in self.figures.values()})


def measure(results: Results, setup: str, stage: str, work: Path) -> dict:
    """A stage's figures: measured in a fresh process unless already in `results`. A formatted_data's files are
    digested, then removed."""
    if (found := results.get(setup, stage)) is not None:
        return found
    figures = run_once(setup, stage, work)
    if stage == "formatted" and setup not in ("lf1", "lfall"):
        figures["digest"] = digest(work / setup / "formatted")
        figures["disk_mb"] = disk_mb(work / setup / "formatted")
    results.put(setup, stage, figures)  # recorded first: a run killed before the removal measures nothing twice
    if stage == "formatted":
        remove(work, setup, "formatted")
    return figures


def remove(work: Path, setup: str, stage: str) -> None:
    done_mark(work, setup, stage).unlink(missing_ok=True)
    shutil.rmtree(work / setup / stage, ignore_errors=True)


def run_once(setup: str, stage: str, work: Path) -> dict:
    """A stage in a fresh process, its output marked whole once it finished."""
    mark = done_mark(work, setup, stage)
    mark.unlink(missing_ok=True)
    figures = in_fresh_process(setup, stage, work)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
    return figures


def bench(n: int, work: Path, stages: tuple[str, ...] = STAGES, chosen: tuple[str, ...] = tuple(SETUPS)) -> None:
    if not (work / "prepared").exists():  # the data and tokenizer, whole: a run killed while preparing starts over
        shutil.rmtree(work / "data", ignore_errors=True)
        shutil.rmtree(work / "tokenizer", ignore_errors=True)
        prepare(work, n)
        (work / "prepared").touch()
    results = Results(work)
    ray = ray_status()
    setups = [s for s in ("local1", "localall", *(["ray"] if ray is None else [])) if s in chosen]
    if not all(results.get(s, stage) for s in setups for stage in stages):
        # the stages not measured run once, untimed, for local 1: their output feeds the others
        for stage in STAGES[:STAGES.index(stages[0])]:
            if not done_mark(work, "local1", stage).exists():
                run_once("local1", stage, work)
    for setup in setups:
        for stage in stages:
            measure(results, setup, stage, work)
        if not (setup == "local1" and stages != STAGES):  # local 1's feed the setups that run later stages only
            for stage in ("raw", "clean"):
                remove(work, setup, stage)
    for setup in ("lf1", "lfall"):
        if setup in chosen:
            measure(results, setup, "formatted", work)
    report(n, results, ray)


def report(n: int, results: Results, ray: str | None) -> None:
    """Every figure in `results`, this invocation's and earlier ones'."""
    setups = [s for s in ("local1", "localall", "ray") if results.get(s, "formatted")]
    invocations = results.invocations()
    print(f"\n{n:,} alpaca rows, cutoff_len {CUTOFF_LEN}, {CORES} cores"
          + (f"; measured in {len(invocations)} invocations ({', '.join(invocations)})" if len(invocations) > 1 else ""))
    print(f"{'setup':<20}" + "".join(f"{stage + ' rows/s':>18}{'peak RSS MB':>14}" for stage in STAGES))
    for setup, label in SETUPS.items():
        if setup == "ray" and ray is not None:
            print(f"{label:<20}{'ray: ' + ray:>18}")
            continue
        cells = ""
        for stage in STAGES:
            r = results.get(setup, stage)
            cells += f"{'-':>18}{'-':>14}" if r is None else f"{r['rows'] / r['seconds']:>18,.0f}{r['peak_rss_mb']:>14,.0f}"
        print(f"{label:<20}{cells}")
    for base in ("lf1", "lfall"):
        if results.get(base, "formatted") is None:
            print(f"baseline {SETUPS[base]}: not measured")
            continue
        lf = results.get(base, "formatted")["seconds"]
        print(f"baseline {SETUPS[base]} ({lf:.1f} s):")
        for setup in setups:
            formatted = results.get(setup, "formatted")["seconds"]
            path = ""
            if all(results.get(setup, stage) for stage in STAGES):
                whole = sum(results.get(setup, stage)["seconds"] for stage in STAGES)
                path = (f"data path {whole:.1f} s = {whole / lf:.2f}x {SETUPS[base]} alone"
                        f"{' (goal <= 1.3x)' if base == 'lf1' else ''}; ")
            print(f"  {SETUPS[setup]}: {path}formatted_data {formatted:.1f} s = "
                  f"{lf / formatted:.2f}x as fast as {SETUPS[base]}{' (goal >= 2x)' if base == 'lf1' else ''}")
    counted_once = [f"{SETUPS[s]} {stage} {r['peak_pss_mb']:,.0f} MB" for s in SETUPS for stage in STAGES
                    if (r := results.get(s, stage)) and r.get("peak_pss_mb")]
    if counted_once:  # figures recorded before PSS was sampled have none
        print(f"peak PSS summed (a page several processes map counted once): {', '.join(counted_once)}")
    disk = [f"{SETUPS[s]} {results.get(s, 'formatted')['disk_mb']:,.0f} MB" for s in SETUPS
            if results.get(s, "formatted") and "disk_mb" in results.get(s, "formatted")]
    if disk:
        print(f"disk: formatted_data's files, or LF's Arrow caches (json, aligned, tokenized): {', '.join(disk)}")
    digests = {setup: results.get(setup, "formatted")["digest"] for setup in setups}
    if len(digests) > 1:
        same = len(set(digests.values())) == 1
        print(f"{', '.join(SETUPS[s] for s in digests)} wrote the same formatted_data files: "
              f"{'yes, byte for byte' if same else 'NO: ' + str(digests)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--work", type=Path, default=None,
                        help="where each size's data, outputs and results are kept, and resumed from (default: a temp "
                             "dir, removed at the end)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the stages to measure, consecutive (e.g. --stages formatted: raw and clean run once, "
                             "untimed, for local 1, and every setup's formatted_data reads that clean_data)")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS),
                        help="the setups to measure (default: all; ray where built and installed)")
    parser.add_argument("--child", nargs=2, metavar=("SETUP", "STAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.work)
    if "formatted" not in args.stages:
        parser.error("--stages: the report compares formatted_data, so it must be among them")
    stages, setups = tuple(s for s in STAGES if s in args.stages), tuple(args.setups)
    for n in args.rows:
        if args.work:
            (args.work / f"rows-{n}").mkdir(parents=True, exist_ok=True)
            bench(n, args.work / f"rows-{n}", stages, setups)
        else:
            with tempfile.TemporaryDirectory() as work:
                bench(n, Path(work), stages, setups)


if __name__ == "__main__":
    main()
