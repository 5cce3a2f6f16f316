"""A run killed with kill -9 in the middle of training: the next run marks it failed, is not blocked by it, and
its training stage resumes from the last complete checkpoint. A run stopped with SIGTERM leaves no training
process behind."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine.train.checkpoints import last_complete_checkpoint
from tests.processes import Child, start, stop_process_group

pytestmark = pytest.mark.slow
OPTIONS = ["--select", "*sft_adapter", "--set", "sft.save_steps=5", "--set", "sft.logging_steps=1"]


def tuneline(tmp_path: Path, *args: str) -> Child:
    """A `tuneline` run whose output goes to files under tmp_path/logs (a full pipe cannot block it)."""
    env = os.environ | {"PYTHONPATH": os.getcwd(), "DAGSTER_HOME": str(tmp_path / "dagster"), "OMP_NUM_THREADS": "1"}
    return start([sys.executable, "-m", "pipelines.cli", *args, "--artifact-root", str(tmp_path / "home")],
                 tmp_path / "logs", env=env)


def sft_trainer_dirs(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "home" / "artifacts").glob("sft_adapter/.work-*/_trainer"))


def wait_for_sft_checkpoint(tmp_path: Path, run: Child, timeout: float = 600) -> Path:
    def found() -> Path | None:
        return next(filter(None, map(last_complete_checkpoint, sft_trainer_dirs(tmp_path))), None)
    return run.wait_until(found, timeout, "SFT's first complete checkpoint", interval=0.2)


def training_processes(spec_dir_marker: str) -> list[int]:
    """pids whose command line runs a training stage of this test's artifact root."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "pipelines.train_process" in command and spec_dir_marker in command:
                found.append(int(proc.name))
    return found


def test_kill_9_mid_training_then_the_next_run_resumes_and_completes(tmp_path):
    first = tuneline(tmp_path, "run", *OPTIONS)
    try:
        checkpoint = wait_for_sft_checkpoint(tmp_path, first)
        os.killpg(first.process.pid, signal.SIGKILL)  # the run and its training child, as an OOM kill would
        assert first.wait(30) is not None, "the run outlived SIGKILL for 30 s"
    finally:
        stop_process_group(first.process)
    second = tuneline(tmp_path, "run", *OPTIONS)
    try:
        code = second.wait(900)
    finally:
        stop_process_group(second.process)
    err = second.err()
    assert code == 0, f"exit {code}: {err[-3000:]}{second.out()[-3000:]}"
    assert f"was left running by process {first.process.pid}, which is gone: marked failed" in err
    assert "sft: resuming from checkpoint-" in err
    (manifest,) = (tmp_path / "home" / "artifacts" / "sft_adapter").glob("*/manifest.json")
    metrics = json.loads(manifest.read_text())["metrics"]
    assert metrics["resumed_from_step"] >= int(checkpoint.name.split("-")[1])
    assert not sft_trainer_dirs(tmp_path)  # published: the work directory and its checkpoints are gone


def test_sigterm_to_a_run_stops_its_training_process_too(tmp_path):
    run = tuneline(tmp_path, "run", *OPTIONS)
    marker = str(tmp_path / "home")
    try:
        wait_for_sft_checkpoint(tmp_path, run)
        children = training_processes(marker)
        assert children, "no training process found"
        run.process.send_signal(signal.SIGTERM)  # the run alone, as a scheduler or the UI stops it
        deadline = time.monotonic() + 120
        while training_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert training_processes(marker) == [], "the training process outlived its run by 120 s"
    finally:
        stop_process_group(run.process)
