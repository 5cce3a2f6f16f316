"""A training stage's process started as the orchestrator starts it (a spec, `python -m engine.train <asset>`), for
the resume tests of every stage."""

import os
import sys
from pathlib import Path

from engine.recipe import load_recipe
from engine.train.child import read_result, spec_of, write_spec
from tests.processes import Child, start as start_child, stop_process_group


def training_spec(tmp_path: Path, name: str, asset: str, entry, keys: tuple[str, ...], overrides: dict,
                  inputs: dict[str, Path]) -> Path:
    """The spec of one `asset` run under the tiny recipe with `overrides`, its work folder under tmp_path/name."""
    recipe = load_recipe("tiny", overrides)[0]
    out = tmp_path / name / "work"
    out.mkdir(parents=True)
    spec = spec_of(asset, name, entry, keys, recipe, inputs, out, tmp_path / "home")
    return write_spec(spec, tmp_path / name / "run")


def start_training(spec: Path, asset: str) -> Child:
    """The training process, its output in files next to its spec (a full pipe cannot block it)."""
    env = os.environ | {"PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return start_child([sys.executable, "-m", "engine.train", asset, "--spec", str(spec)],
                       spec.parent.parent / "logs", env=env)


def finish_training(spec: Path, asset: str) -> dict:
    """Start the process again on the same spec, let it run to the end (at most 600 s) and return its result."""
    child = start_training(spec, asset)
    try:
        code = child.wait(600)
    finally:
        stop_process_group(child.process)
    assert code == 0, f"exit {code}: {child.err()[-3000:]}"
    return read_result(spec)
