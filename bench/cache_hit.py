"""Cold materialization of the whole tiny graph vs a second one served from fingerprinted artifacts.

Both run in this process through Dagster's materialize(), into a fresh temporary artifact root.
Prints each wall time and the ratio; the goal is a re-run that reuses everything in seconds.
Usage: .venv/bin/python bench/cache_hit.py
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.chdir(Path(__file__).resolve().parent.parent)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import dagster as dg  # noqa: E402

from pipelines.definitions import ASSETS, resources  # noqa: E402


def timed_materialize(root: str) -> tuple[float, dict[str, bool]]:
    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources("tiny", root), instance=instance)
    hits = {e.asset_key.to_user_string(): e.materialization.metadata["cache_hit"].value
            for e in result.get_asset_materialization_events()}
    return time.perf_counter() - started, hits


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        cold, cold_hits = timed_materialize(root)
        warm, warm_hits = timed_materialize(root)
    print(f"cold run:   {cold:7.1f} s  ({sum(not h for h in cold_hits.values())} of {len(cold_hits)} assets built)")
    print(f"cached run: {warm:7.1f} s  ({sum(warm_hits.values())} of {len(warm_hits)} assets were cache hits)")
    print(f"ratio cold/cached: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
