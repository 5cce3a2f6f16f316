"""A stage run as a process of its own: `tuneline train <stage> --spec spec.json` or `python -m engine.train`.

The spec names the stage (never a module: its entry point comes from the fixed table of engine/train/entries.py), the
recipe, the keys the stage may read, its parents' artifacts and its work
directory: everything the stage needs, nothing it should not read. The child reports its lines on stderr, or
through the reporter its caller hands in (pipelines/train_process.py: Dagster Pipes), and there its live points
too (engine/train/live.py: custom messages {"point": ...}). Only the process of
rank 0 reports or writes; the orchestrator publishes the work directory and records the catalog.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from engine.errors import TunelineError
from engine.runtime.startup import collector_paused
from engine.train.entries import STAGE_ENTRIES, entry_name, stage_entry
from engine.train.live import POINT, points_to

RESULT_FILE = "result.json"  # beside the spec, outside the work directory: never part of the artifact
ERROR_FILE = "error.json"  # why it failed, and whether trying again may help
# failures that another attempt may not meet: a GPU shared with another job, a lost connection
TRANSIENT = ("OutOfMemoryError", "ConnectionError", "TimeoutError", "DistBackendError", "DistNetworkError")
INTERRUPTED = 130  # the exit code of a stage stopped by SIGINT/SIGTERM after saving a checkpoint


def spec_of(stage: str, fingerprint: str, entry: Callable, keys: tuple[str, ...], recipe, inputs: dict[str, Path],
            out: Path, home: Path, device: dict | None = None) -> dict:
    """The spec of a stage run in a process of its own; `entry` (its declared entry point) must be the one the child
    will run for it. `device`: the declared hardware a pod must find at its start (engine/models/backends.py
    pod_expectation), where its fingerprint records the declared accelerator."""
    if STAGE_ENTRIES.get(stage) != entry_name(entry):
        raise TunelineError(f"stage {stage}: its entry point {entry_name(entry)} is not the one a stage process "
                            f"runs for it ({STAGE_ENTRIES.get(stage, 'none')}, engine/train/entries.py)")
    return {"stage": stage, "fingerprint": fingerprint, "keys": list(keys), "recipe": recipe.model_dump(mode="json"),
            "inputs": {name: str(path) for name, path in inputs.items()}, "out": str(out), "home": str(home),
            **({"device": device} if device else {})}


def write_spec(spec: dict, directory: Path) -> Path:
    """spec.json in `directory` (created), with no result left from an earlier attempt."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RESULT_FILE).unlink(missing_ok=True)
    (directory / ERROR_FILE).unlink(missing_ok=True)
    path = directory / "spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def read_result(spec_path: Path) -> dict:
    path = spec_path.parent / RESULT_FILE
    if not path.is_file():
        raise TunelineError(f"the training process of {json.loads(spec_path.read_text())['stage']} exited without "
                            f"a result ({path} is missing)")
    return json.loads(path.read_text())


def read_error(spec_path: Path) -> dict:
    """{"kind": "transient" | "interrupted" | "error", "message"} of a failed training process."""
    path = spec_path.parent / ERROR_FILE
    return json.loads(path.read_text()) if path.is_file() else {"kind": "error", "message": "no error recorded"}


def record_error(spec_path: Path, kind: str, message: str, where: str | None = None) -> None:
    """`where`: the step an interrupted stage stopped at (the orchestrator's stop line names it)."""
    if rank() == 0:
        (spec_path.parent / ERROR_FILE).write_text(json.dumps({"kind": kind, "message": message, "where": where}))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def die_with_parent() -> None:
    """Linux: SIGTERM when the launching process dies (even by kill -9), so no orphan keeps training or holds a
    GPU; the SIGTERM saves a checkpoint first."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


Reporter = Callable[[], ContextManager[tuple[Callable[[str], None], Callable[[dict], None]]]]


@contextlib.contextmanager
def stderr_reporter() -> Iterator[tuple[Callable[[str], None], Callable[[dict], None]]]:
    """(say, report_metrics): lines on stderr from rank 0; metrics only in result.json."""
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if rank() == 0 else (lambda line: None)
    yield say, lambda metrics: None


def run_spec(spec_path: Path, reporter: Reporter = stderr_reporter) -> dict:
    """Run the stage a spec describes, in this process. Returns its metrics (also written beside the spec)."""
    from engine.store.home import Home
    from engine.recipe import Recipe
    from engine.stage import RecipeView, StageRun
    spec = json.loads(spec_path.read_text())
    if "entry" in spec:  # an older or hand-written spec: the stage alone says what runs
        raise TunelineError(f"{spec_path}: names an entry point ({spec['entry']!r}); a spec names its stage only, "
                            "and the stage's entry point comes from engine/train/entries.py")
    with collector_paused():
        entry = stage_entry(spec["stage"], str(spec_path))
    if "device" in spec:  # a pod whose fingerprint records the declared accelerator: it must have that hardware
        from engine.models.backends import check_pod
        check_pod(spec["device"])
    recipe = Recipe.model_validate(spec["recipe"])
    with reporter() as (say, report), points_to(lambda point: report({POINT: point})):
        run = StageRun(spec["stage"], spec["fingerprint"], RecipeView(recipe, tuple(spec["keys"]), spec["stage"]),
                       {k: Path(v) for k, v in spec["inputs"].items()}, Path(spec["out"]), Home(spec["home"]), say)
        metrics = entry(run)
        if rank() == 0:
            (spec_path.parent / RESULT_FILE).write_text(json.dumps(metrics, default=str))
            report(metrics)
    return metrics


def main(argv: list[str] | None = None, reporter: Reporter = stderr_reporter, orchestrated: bool = False) -> int:
    """`orchestrated`: an orchestrator started this process and says how it ended (no stop line of its own)."""
    import argparse
    from engine.train.checkpoints import TrainingInterrupted
    parser = argparse.ArgumentParser(prog="tuneline train", description="Run one stage (a training stage, or an "
                                     "export or evaluation stage a pod runs) from its spec.")
    parser.add_argument("stage", nargs="?", help="the stage the spec is for (checked against it)")
    parser.add_argument("--spec", required=True, type=Path, help="spec.json written by the orchestrator")
    parser.add_argument("--verbose", action="store_true", help="show a traceback on errors")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        if not args.spec.is_file():
            raise TunelineError(f"--spec {args.spec}: no such file (expected the spec.json of a stage)")
        stage = json.loads(args.spec.read_text())["stage"]
        if args.stage and args.stage != stage:
            raise TunelineError(f"--spec {args.spec} is for stage {stage}, not {args.stage}")
        run_spec(args.spec, reporter)
    except TrainingInterrupted as stopped:
        record_error(args.spec, "interrupted", str(stopped), stopped.where)
        if not orchestrated:  # under an orchestrator, its one stop line says it (pipelines/cli/stopped.py)
            print(f"tuneline: {stopped}", file=sys.stderr)
        return INTERRUPTED
    except TunelineError as exc:
        record_error(args.spec, "error", str(exc))
        if args.verbose:
            raise
        print(f"tuneline: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        kind = "transient" if any(type(e).__name__ in TRANSIENT for e in causes(exc)) else "error"
        record_error(args.spec, kind, f"{type(exc).__name__}: {exc}")
        raise
    return 0


def causes(exc: BaseException) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__
