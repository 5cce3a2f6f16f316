"""The tiny GRPO demo (pipelines/recipes/tiny_grpo.yaml: sft, then grpo rewarded by exact match) run to deployment
through the CLI: the gate passes, the rollout table is in the artifact, and held-out exact match rose over SFT."""

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main

pytestmark = pytest.mark.slow


def manifest(root: Path, asset: str) -> dict:
    (path,) = (root / "artifacts" / asset).glob("*/manifest.json")
    return json.loads(path.read_text())


def test_tiny_grpo_runs_to_deployment_and_raises_held_out_exact_match(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["run", "--recipe", "pipelines/recipes/tiny_grpo.yaml", "--artifact-root", str(root)]) == 0
    table = capsys.readouterr().out
    assert "grpo_not_worse_than_sft ok" in table and "deployment" in table
    sft, grpo = manifest(root, "eval_sft")["metrics"], manifest(root, "eval_grpo")["metrics"]
    assert grpo["samples"] == sft["samples"] == 128
    assert grpo["accuracy"] > sft["accuracy"]
    (rollouts,) = (root / "artifacts" / "grpo_adapter").glob("*/rollouts.parquet")
    table = pd.read_parquet(rollouts)
    assert list(table.columns) == ["step", "prompt", "completion", "exact_match", "total"]
    assert 0 < len(table) <= 2000 and set(table["exact_match"]) <= {0.0, 1.0}
    trained = manifest(root, "grpo_adapter")["metrics"]
    assert trained["reward_curve"] and trained["train_prompts"] == trained["formatted_train_rows"]
