"""The graph's stages on a CUDA GPU through the engine alone (no Dagster): what a GPU machine without the
orchestration stack can prove. Each stage is built in process (training too, in the orchestrator's process rather
than a child), in the order of engine/graph.py, up to the evaluations (the deployment's server is left out), with
the recipe `tiny` (or --recipe) and --set overrides. Prints, per stage: seconds, device, dtype, peak GPU memory and
its key numbers; and first the device policy's answers on this machine (what tests/test_device.py's `gpu` tests
assert). Stops at the first stage that fails, naming it.

Usage: python bench/gpu_engine_smoke.py [--recipe tiny] [--set key=value ...] [--until STAGE] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY_NUMBERS = ("eval_loss_before", "eval_loss_after", "eval_accuracy", "eval_reward_margin", "max_logit_diff",
               "ppl_ratio", "size_bytes", "exact_match", "tokens_per_second", "steps", "kept", "quarantined",
               "reward_first", "reward_last", "kl_last", "accuracy")


def device_policy() -> None:
    """The answers tests/test_device.py's gpu tests expect on a CUDA machine."""
    from engine.models import device as policy
    from engine.models.device import Precision, mixed_precision
    from engine.preflight import checked_recipe
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    print(f"policy: device {policy.device()}, default dtype {policy.device_default()} (expected cuda:0, {half}); "
          f"mixed precision use_cpu={mixed_precision(Precision())['use_cpu']} (expected False); "
          f"model.fp16 accepted: {checked_recipe('tiny', {'model.fp16': True}).model.fp16}", flush=True)


def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--until", help="the last stage to build")
    parser.add_argument("--home", type=Path, help="artifact root (default: a temporary folder)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__}; device: {torch.cuda.get_device_name() if gpu else 'CPU (no CUDA GPU)'}",
          flush=True)
    if gpu:
        device_policy()
    from engine.build import build_stage
    from engine.graph import STAGES
    from engine.plan import make_plan
    from engine.preflight import checked_recipe
    from engine.store.home import Home
    overrides = dict(item.split("=", 1) for item in args.set)
    recipe = checked_recipe(args.recipe, {k: parse_value(v) for k, v in overrides.items()})
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(args.home or Path(tmp))
        plan = make_plan(STAGES, recipe, home.hasher())
        names = [s.name for s in STAGES if s.name != "deployment"]
        if args.until:
            names = names[:names.index(args.until) + 1]
        print(f"\n{'stage':<16} {'seconds':>8} {'device':>7} {'dtype':>9} {'peak GB':>8}  key numbers", flush=True)
        for name in names:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            try:
                artifact = build_stage(home, plan, name, recipe, log=lambda line: None)
            except Exception as exc:  # noqa: BLE001 - the smoke says which stage failed and stops
                print(f"{name}: FAILED: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                return 1
            seconds = time.perf_counter() - started
            m = artifact.metrics
            peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0
            numbers = ", ".join(f"{k} {m[k]}" for k in KEY_NUMBERS if isinstance(m.get(k), (int, float)))
            print(f"{name:<16} {seconds:>8.1f} {str(m.get('device', '-')):>7} {str(m.get('dtype', '-')):>9} "
                  f"{peak:>8.2f}  {numbers}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
