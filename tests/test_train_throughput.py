"""tokens_per_second counts what this process trained: the tokens of the steps it ran (max_steps stops an epoch
early; a resumed run starts at its checkpoint), over this run's seconds. It once was the whole dataset x
num_train_epochs over the runtime, whatever ran."""

import json

import pytest
from datasets import load_from_disk

import engine.train.skeleton
from engine.recipe import SftSection
from engine.train.sft import train_sft

pytestmark = pytest.mark.slow
FAST = {"learning_rate": 3e-3, "logging_steps": 1, "num_train_epochs": 3}


def train_lengths(formatted_dir) -> list[int]:
    return [len(ids) for ids in load_from_disk(formatted_dir / "sft")["train"]["input_ids"]]


def assert_rate(metrics):
    assert metrics["tokens_per_second"] == pytest.approx(metrics["tokens_this_run"] / metrics["seconds_this_run"],
                                                         rel=0.01)


@pytest.mark.parametrize("padding_free", [True, False])
def test_max_steps_over_one_epoch_counts_that_epoch_not_num_train_epochs(padding_free, tiny_model_dir,
                                                                       formatted_dir, tmp_path):
    """Two steps of (about) half the train split each: one epoch, every row once, whatever order; the old count
    claimed num_train_epochs (3) of them. Padding-free batches (counted whole) and padded ones (padding left out)
    agree."""
    lengths = train_lengths(formatted_dir)
    half = (len(lengths) + 1) // 2
    cfg = SftSection(**FAST, max_steps=2, per_device_train_batch_size=half, padding_free=padding_free)
    metrics = train_sft(tiny_model_dir, formatted_dir, cfg, 128, tmp_path)
    assert metrics["steps"] == 2 and metrics["padding_free"] is padding_free
    assert metrics["tokens_this_run"] == sum(lengths)
    assert_rate(metrics)


def test_max_steps_counts_only_the_steps_run(tiny_model_dir, formatted_dir, tmp_path):
    """Two steps of 4 rows out of an epoch of dozens of steps: at most 8 rows' tokens."""
    lengths = sorted(train_lengths(formatted_dir))
    metrics = train_sft(tiny_model_dir, formatted_dir, SftSection(**FAST, max_steps=2, per_device_train_batch_size=4),
                        128, tmp_path)
    assert len(lengths) // 4 > 20 and metrics["steps"] == 2
    assert sum(lengths[:8]) <= metrics["tokens_this_run"] <= sum(lengths[-8:])
    assert_rate(metrics)


def test_a_resumed_run_counts_only_the_steps_it_ran(tiny_model_dir, formatted_dir, tmp_path, monkeypatch):
    """A run stopped at step 2 leaves its complete checkpoint; the rerun to step 4 resumes from it and counts
    steps 3 and 4 only: an uninterrupted 4-step run's tokens less the checkpoint's."""
    cfg = {**FAST, "per_device_train_batch_size": 4, "save_steps": 2}
    whole = train_sft(tiny_model_dir, formatted_dir, SftSection(**cfg, max_steps=4), 128, tmp_path / "whole")
    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(engine.train.skeleton, "remove_scratch", lambda out: None)  # keep its checkpoint, as a crash
        first = train_sft(tiny_model_dir, formatted_dir, SftSection(**cfg, max_steps=2), 128, interrupted)
    state = json.loads((interrupted / "_trainer" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["num_input_tokens_seen"] == first["tokens_this_run"]
    resumed = train_sft(tiny_model_dir, formatted_dir, SftSection(**cfg, max_steps=4), 128, interrupted)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == whole["steps"] == 4
    assert resumed["tokens_this_run"] == whole["tokens_this_run"] - first["tokens_this_run"] > 0
    assert_rate(resumed)
