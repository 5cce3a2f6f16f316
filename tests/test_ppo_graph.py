"""LLaMA-Factory's own examples llama3_lora_{sft,reward,ppo}.yaml, imported (engine/importers/llamafactory.py) and
pointed at the tiny model and the demo data, run stages [sft, rm, ppo] on the whole tiny graph through Dagster's
materialize(), to deployment: PPO trains on the reward model's scores, writes its rollout table, and the gate judges
it against SFT."""

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

import torch
from safetensors.torch import load_file

from engine.importers.llamafactory import import_configs
from pipelines.cli import main
from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow
EXAMPLES = Path("tests/fixtures/llamafactory/examples")
# what a user edits in each example to run it here: the tiny model is random weights, so SFT and the reward model
# train it fully (as pipelines/recipes/tiny.yaml does: a LoRA on random weights learns nothing the reward check sees);
# PPO keeps the example's LoRA and runs 3 short steps
EDITS = {
    "sft": {"dataset": "identity,alpaca_tasks", "finetuning_type": "full", "learning_rate": 3.0e-3,
            "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "num_train_epochs": 1.0,
            "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1},
    "reward": {"dataset": "preference_tasks", "finetuning_type": "full", "learning_rate": 3.0e-3,
               "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "num_train_epochs": 1.0,
               "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1},
    "ppo": {"dataset": "identity,alpaca_tasks", "max_steps": 3, "max_new_tokens": 8, "ppo_epochs": 2,
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1},
}
GATE = {"ppo.min_reward_gain": -100.0}  # not a LLaMA-Factory key: a 3-step PPO on a random-weights model


def imported_recipe(tmp_path: Path, model_dir: Path) -> Path:
    """The three examples as a user points them here, imported into one recipe file."""
    data = tmp_path / "data"
    shutil.copytree("data", data)
    # a LLaMA-Factory data directory names its datasets in dataset_info.json; the demo registry has the same fields
    (data / "dataset_info.json").write_text(json.dumps(yaml.safe_load((data / "datasets.yaml").read_text())))
    paths = []
    for stage, edits in EDITS.items():
        config = yaml.safe_load((EXAMPLES / f"llama3_lora_{stage}.yaml").read_text())
        config.update(model_name_or_path=str(model_dir), dataset_dir=str(data), template="qwen",  # ChatML, as tiny
                      cutoff_len=128, output_dir=str(tmp_path / "saves" / stage), bf16=False, **edits)
        paths.append(tmp_path / f"llama3_lora_{stage}.yaml")
        paths[-1].write_text(yaml.safe_dump(config))
    text, notes = import_configs(paths)
    assert not [n for n in notes if "not a local path" in n or "template" in n], notes
    assert yaml.safe_load(text)["ppo"]["lora_alpha"] == 16  # LLaMA-Factory's default: twice lora_rank 8
    (tmp_path / "recipe.yaml").write_text(text)
    return tmp_path / "recipe.yaml"


def test_imported_llamafactory_sft_rm_ppo_runs_to_deployment(tmp_path, tiny_model_dir):
    recipe = imported_recipe(tmp_path, tiny_model_dir)
    assert yaml.safe_load(recipe.read_text())["stages"] == ["sft", "rm", "ppo"]
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources(str(recipe), str(tmp_path / "home"), GATE),
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
    # `tuneline export ppo_adapter` merges SFT then PPO into pt_model, as merged_model does: the same weights
    out = tmp_path / "exported"
    assert main(["export", "ppo_adapter", str(out), "--recipe", str(recipe), "--artifact-root",
                 str(tmp_path / "home"), "--set", "ppo.min_reward_gain=-100.0"]) == 0
    assert json.loads((out / "lineage.json").read_text())["export"]["asset"] == "ppo_adapter"
    exported, merged = load_file(str(out / "model.safetensors")), load_file(str(model_file(materialized)))
    assert set(exported) == set(merged)
    assert all(torch.allclose(exported[k].float(), merged[k].float(), atol=1e-6) for k in merged)


def model_file(materialized: dict) -> Path:
    (weights,) = Path(materialized["merged_model"]["path"]).glob("*.safetensors")
    return weights
