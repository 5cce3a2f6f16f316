"""clean_data on the local engine and on Ray (data.engine: ray) side by side: rows/s over N synthetic alpaca rows
(bench/data_path.py's generator and ingest), and whether both wrote the same tables.

Each engine as clean_data runs it (engine/data/clean_stage.py), its tables written as shards: local:
engine.data.clean_stream.stream_clean on the pool of data.preprocessing_num_workers' default (every core from 20,000
rows); ray: engine.data.ray_engine.ray_clean on a local Ray of every core, started before the clock (its start-up is
printed on its own), its kept rows streamed into the shard writer. Both with the recipe's default clean steps, then
again with near_dedup added.

Usage: .venv/bin/python bench/ray_clean.py [--rows 100000] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.data_path import DATA_FILE, SOURCE, generate  # noqa: E402
from engine.runtime.pool import usable_cores  # noqa: E402


def tables_digest(out: Path, report: dict) -> str:
    """One digest of the report and every table shard clean_data wrote to `out`, in path order."""
    digest = hashlib.sha256(json.dumps(report).encode())
    for path in sorted(out.glob("*.parquet")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    import ray
    from pydantic import TypeAdapter

    from engine.data.clean_stream import stream_clean
    from engine.data.ingest import ingest_to
    from engine.data.ray_engine import ray_clean
    from engine.data.registry import resolve_sources
    from engine.recipe import CleanSection, CleanStep
    from engine.runtime.pool import worker_count
    from engine.store.tables import table_files, table_rows

    work = args.work or Path(tempfile.mkdtemp(prefix="ray-clean-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    generate(args.rows, data / DATA_FILE)
    (data / "datasets.yaml").write_text(f"{SOURCE}:\n  file_name: {DATA_FILE}\n  formatting: alpaca\n")
    raw = work / "raw"
    raw.mkdir(exist_ok=True)
    ingest_to(raw, resolve_sources(data, "datasets.yaml", [SOURCE]))
    files = table_files(raw, "rows")
    start = time.perf_counter()
    ray.init(num_cpus=usable_cores(), include_dashboard=False)
    print(f"Ray start-up: {time.perf_counter() - start:.1f} s ({usable_cores()} CPUs)")
    default = CleanSection()
    with_near = CleanSection(steps=[*default.steps, TypeAdapter(CleanStep).validate_python({"step": "near_dedup"})])
    print("| steps | engine | rows | seconds | rows/s | tables digest |\n|---|---|---|---|---|---|")
    try:
        for label, cfg in (("default", default), ("default + near_dedup", with_near)):
            for engine in ("local", "ray"):
                out = work / label.replace(" ", "") / engine
                out.mkdir(parents=True, exist_ok=True)
                start = time.perf_counter()  # each engine as clean_data runs it (engine/data/clean_stage.py)
                if engine == "local":
                    report = stream_clean(raw, out, cfg, [SOURCE], work_dir=out,
                                          workers=worker_count(None, table_rows(raw, "rows")))
                else:
                    report = ray_clean(files, out, cfg, [SOURCE], work_dir=out)
                seconds = time.perf_counter() - start
                digest = tables_digest(out, report)
                rows = report["rows_in"]
                print(f"| {label} | {engine} | {rows} | {seconds:.1f} | {rows / seconds:,.0f} | {digest} |",
                      flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
