"""clean_data on the local engine and on Ray (data.engine: ray) side by side: rows/s over N synthetic alpaca rows
(bench/data_path.py's generator and ingest), and whether both wrote the same tables.

local: engine.data.clean.clean in one process (read raw's rows, clean, write); ray: engine.data.ray_engine.ray_clean on
a local Ray of every core, started before the clock (its start-up is printed on its own). Both with the recipe's
default clean steps, then again with near_dedup added.

Usage: .venv/bin/python bench/ray_clean.py [--rows 100000] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.data_path import SOURCE, generate  # noqa: E402


def written(result, out: Path) -> str:
    """clean_raw_data's tables of a result, and one digest of their bytes and the report."""
    from engine.store.tables import CLUSTER_COLUMNS, QUARANTINE_COLUMNS, REWRITE_COLUMNS, ROW_COLUMNS, write_rows
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps(result.report).encode())
    for name, records, columns in (("rows", result.rows, ROW_COLUMNS), ("quarantine", result.quarantine,
                                   QUARANTINE_COLUMNS), ("clusters", result.clusters, CLUSTER_COLUMNS),
                                  ("rewrites", result.rewrites, REWRITE_COLUMNS)):
        digest.update(write_rows(records, out / f"{name}.parquet", columns).read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    import ray
    from pydantic import TypeAdapter

    from engine.data.clean import clean
    from engine.data.ingest import ingest_to
    from engine.data.ray_engine import ray_clean
    from engine.data.registry import resolve_sources
    from engine.recipe import CleanSection, CleanStep
    from engine.store.tables import read_rows, table_files

    work = args.work or Path(tempfile.mkdtemp(prefix="ray-clean-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    generate(args.rows, data / "alpaca.json")
    (data / "datasets.yaml").write_text(f"{SOURCE}:\n  file_name: alpaca.json\n  formatting: alpaca\n")
    raw = work / "raw"
    raw.mkdir(exist_ok=True)
    ingest_to(raw, resolve_sources(data, "datasets.yaml", [SOURCE]))
    files = table_files(raw, "rows")
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    print(f"Ray start-up: {time.perf_counter() - start:.1f} s ({os.cpu_count()} CPUs)")
    default = CleanSection()
    with_near = CleanSection(steps=[*default.steps, TypeAdapter(CleanStep).validate_python({"step": "near_dedup"})])
    print("| steps | engine | rows | seconds | rows/s | tables digest |\n|---|---|---|---|---|---|")
    try:
        for label, cfg in (("default", default), ("default + near_dedup", with_near)):
            for engine in ("local", "ray"):
                start = time.perf_counter()
                if engine == "local":
                    result = clean(read_rows(files[0]) if len(files) == 1 else
                                   [r for f in files for r in read_rows(f)], cfg, [SOURCE])
                else:
                    result = ray_clean(files, cfg, [SOURCE])
                digest = written(result, work / label.replace(" ", "") / engine)
                seconds = time.perf_counter() - start
                rows = result.report["rows_in"]
                print(f"| {label} | {engine} | {rows} | {seconds:.1f} | {rows / seconds:,.0f} | {digest} |",
                      flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
