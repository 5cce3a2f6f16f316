"""Crash-safe training: a training process killed with kill -9 resumes from its last complete checkpoint and
ends with the same adapter as an uninterrupted run; a half-written checkpoint is skipped; SIGTERM saves a
checkpoint before the process exits."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine.train.sft
from engine.models.device import PRECISION_KEYS
from engine.store.home import Home
from engine.recipe import load_recipe
from engine.train.checkpoints import COMPLETE, last_complete_checkpoint
from tests.processes import Child, stop_process_group
from tests.training_child import finish_training, start_training, training_spec

pytestmark = pytest.mark.slow
STEPS = {"sft.max_steps": 24, "sft.save_steps": 4, "sft.logging_steps": 1, "sft.per_device_train_batch_size": 8,
         "sft.learning_rate": 3e-3, "sft.finetuning_type": "lora"}  # resumes an adapter (tiny's own SFT is full)
KEYS = ("sft", "data.cutoff_len", "launcher", *PRECISION_KEYS)  # launcher: as the asset locates it


def spec_for(tmp_path: Path, name: str, tiny_model_dir: Path, formatted_dir: Path) -> Path:
    return training_spec(tmp_path, name, "sft_adapter", engine.train.sft.train_sft_adapter, KEYS, STEPS,
                         {"pt_model": tiny_model_dir, "formatted_data": formatted_dir})


def start(spec: Path) -> Child:
    return start_training(spec, "sft_adapter")


def finish(spec: Path) -> dict:
    return finish_training(spec, "sft_adapter")


def wait_for_checkpoint(trainer_dir: Path, at_least: int, child: Child, timeout: float = 300) -> Path:
    def found() -> Path | None:
        last = last_complete_checkpoint(trainer_dir)
        return last if last and int(last.name.split("-")[1]) >= at_least else None
    return child.wait_until(found, timeout, f"a complete checkpoint >= {at_least} under {trainer_dir}", interval=0.05)


def adapter(spec: Path) -> dict[str, torch.Tensor]:
    return load_file(str(spec.parent.parent / "work" / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, formatted_dir):
    spec = spec_for(tmp_path_factory.mktemp("resume"), "whole", tiny_model_dir, formatted_dir)
    return spec, finish(spec)


def test_kill_9_mid_training_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted, tiny_model_dir,
                                                                       formatted_dir):
    whole_spec, whole = uninterrupted
    spec = spec_for(tmp_path, "killed", tiny_model_dir, formatted_dir)
    trainer_dir = tmp_path / "killed" / "work" / "_trainer"
    child = start(spec)
    try:
        checkpoint = wait_for_checkpoint(trainer_dir, 8, child)
        os.killpg(child.process.pid, signal.SIGKILL)  # an OOM kill, a lost node: no chance to clean up
        assert child.wait(30) is not None, "the training process outlived SIGKILL for 30 s"
    finally:
        stop_process_group(child.process)
    step = int(checkpoint.name.split("-")[1])
    last = last_complete_checkpoint(trainer_dir)  # where the rerun resumes (a later one may have completed)
    seen = json.loads((last / "trainer_state.json").read_text())["num_input_tokens_seen"]
    half = trainer_dir / f"checkpoint-{step + 100}"  # what a kill in the middle of a save leaves
    half.mkdir()
    (half / "trainer_state.json").write_text("{")
    resumed = finish(spec)
    assert resumed["resumed_from_step"] == int(last.name.split("-")[1]) >= step
    assert resumed["steps"] == whole["steps"] == 24
    assert 0 < resumed["tokens_this_run"] == whole["tokens_this_run"] - seen  # tokens/s counts the resumed steps only
    assert [p["step"] for p in resumed["loss_curve"]][-1] == 24
    mine, theirs = adapter(spec), adapter(whole_spec)
    assert mine.keys() == theirs.keys()
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < 1e-4  # the same adapter
    assert resumed["eval_loss_after"] == pytest.approx(whole["eval_loss_after"], abs=1e-3)
    assert not trainer_dir.exists()  # the checkpoints go once the stage is done


def test_sigterm_saves_a_checkpoint_then_stops_and_a_rerun_finishes(tmp_path, tiny_model_dir, formatted_dir):
    spec = spec_for(tmp_path, "stopped", tiny_model_dir, formatted_dir)
    trainer_dir = tmp_path / "stopped" / "work" / "_trainer"
    child = start(spec)
    try:
        wait_for_checkpoint(trainer_dir, 4, child)
        os.killpg(child.process.pid, signal.SIGTERM)
        code = child.wait(120)
    finally:
        stop_process_group(child.process)
    err = child.err()
    assert code == 130, f"exit {code}: {err[-2000:]}"
    assert "stopped by SIGTERM" in err
    saved = last_complete_checkpoint(trainer_dir)
    assert saved is not None and (saved / COMPLETE).is_file() and int(saved.name.split("-")[1]) < 24
    assert finish(spec)["steps"] == 24


def test_the_orchestrator_keeps_a_training_stage_s_work_directory_when_it_fails(tmp_path):
    from engine.build import build_stage
    from engine.plan import make_plan
    from engine.stage import Stage

    def fails_after_a_checkpoint(run):
        (run.out / "_trainer" / "checkpoint-4").mkdir(parents=True)
        raise RuntimeError("the GPU fell over")
    stage = Stage("flaky", entry=fails_after_a_checkpoint, training=True)
    recipe = load_recipe("tiny")[0]
    plan = make_plan([stage], recipe)
    home = Home(tmp_path)
    with pytest.raises(RuntimeError):
        build_stage(home, plan, "flaky", recipe)
    assert (home.work_dir("flaky", plan["flaky"].fingerprint) / "_trainer" / "checkpoint-4").is_dir()
