"""stages [sft, rm, ppo] on the whole tiny graph through Dagster's materialize(), to deployment: PPO trains on the
reward model's scores, writes its rollout table, and the gate judges it against SFT."""

import math
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow
PPO = {"stages": ["sft", "rm", "ppo"], "sft.num_train_epochs": 1, "ppo.max_steps": 3, "ppo.max_new_tokens": 8,
       "ppo.ppo_epochs": 2, "ppo.min_reward_gain": -100.0}  # a 3-step PPO on a random-weights model: a tolerant gate


def test_sft_rm_ppo_runs_to_deployment(tmp_path):
    shutil.copytree("data", tmp_path / "data")
    tiny = yaml.safe_load(Path("pipelines/recipes/tiny.yaml").read_text())
    tiny["data"]["dataset_dir"] = str(tmp_path / "data")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny))
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources(str(tmp_path / "recipe.yaml"), str(tmp_path / "home"), PPO),
                                instance=instance, raise_on_error=False)
    assert result.success, [(e.step_key, e.message) for e in result.all_events if e.is_failure]
    materialized = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                    for e in result.get_asset_materialization_events()}
    assert {"ppo_adapter", "eval_ppo", "merged_model", "deployment"} <= set(materialized)
    ppo = materialized["ppo_adapter"]
    assert ppo["steps"] == 3 and ppo["rollout_rows"] > 0 and ppo["train_prompts"] > 0
    rollouts = pd.read_parquet(ppo["rollouts"])
    assert list(rollouts.columns) == ["step", "prompt", "completion", "score", "kl"]
    assert sorted(set(rollouts["step"])) == [1, 2, 3]
    assert rollouts["kl"].abs().sum() > 0 and all(math.isfinite(x) for x in rollouts["score"])
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["finite_losses"].passed
    gate = checks["ppo_not_worse_than_sft"]
    assert gate.passed and "PPO mean reward score" in gate.metadata["detail"].value
