"""GRPO checkpoints and resumes as sft/dpo do (tests/test_resume.py): a GRPO process killed with kill -9 resumes
from its last complete checkpoint, trains to the end, and its rollout table holds each step once."""

import os
import signal
from pathlib import Path

import pandas as pd
import pytest

import engine.train.grpo
from engine.models.device import PRECISION_KEYS
from engine.train.checkpoints import last_complete_checkpoint
from tests.processes import Child, stop_process_group
from tests.training_child import finish_training, start_training, training_spec

pytestmark = pytest.mark.slow
STEPS = {"stages": ["grpo"], "grpo.max_steps": 8, "grpo.save_steps": 2, "grpo.logging_steps": 1,
         "grpo.per_device_train_batch_size": 8, "grpo.num_generations": 4, "grpo.max_completion_length": 8,
         "grpo.finetuning_type": "lora"}


def spec_for(tmp_path: Path, name: str, tiny_model_dir: Path, formatted_dir: Path) -> Path:
    return training_spec(tmp_path, name, "grpo_adapter", engine.train.grpo.train_grpo_adapter,
                         ("grpo", "launcher", *PRECISION_KEYS), STEPS, {"pt_model": tiny_model_dir, "formatted_data": formatted_dir})


def start(spec: Path) -> Child:
    return start_training(spec, "grpo_adapter")


def test_kill_9_mid_grpo_resumes_and_the_rollout_table_holds_each_step_once(tmp_path, tiny_model_dir,
                                                                            formatted_dir):
    spec = spec_for(tmp_path, "killed", tiny_model_dir, formatted_dir)
    trainer_dir = tmp_path / "killed" / "work" / "_trainer"
    child = start(spec)
    try:
        def found():
            last = last_complete_checkpoint(trainer_dir)
            return last if last and int(last.name.split("-")[1]) >= 4 else None
        child.wait_until(found, 300, f"a complete checkpoint >= 4 under {trainer_dir}", interval=0.05)
        os.killpg(child.process.pid, signal.SIGKILL)
        assert child.wait(30) is not None, "the training process outlived SIGKILL for 30 s"
    finally:
        stop_process_group(child.process)
    last = int(last_complete_checkpoint(trainer_dir).name.split("-")[1])
    result = finish_training(spec, "grpo_adapter")
    assert result["resumed_from_step"] == last >= 4 and result["steps"] == 8
    assert [p["step"] for p in result["reward_curve"]] == list(range(1, 9))  # restored with the trainer state
    rollouts = pd.read_parquet(tmp_path / "killed" / "work" / "rollouts.parquet")
    assert rollouts.groupby("step").size().to_dict() == {step: 8 for step in range(8)}  # 2 prompts x 4 each
    assert list(rollouts.columns) == ["step", "prompt", "completion", "exact_match", "total"]
    assert (tmp_path / "killed" / "work" / "adapter" / "adapter_model.safetensors").is_file()
    assert not trainer_dir.exists()
