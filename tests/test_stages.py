"""Stages follow the recipe: with `stages: [sft]` (LLaMA-Factory's qwen3_lora_sft.yaml case) the graph runs
base -> data -> SFT -> merge -> GPTQ/AWQ -> evaluation -> deployment, and reward_model, dpo_adapter and eval_dpo
say "not configured" instead of failing."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml

from assets.stage_asset import CHECKS_NOT_CONFIGURED
from engine.evaluate.compare import comparison_markdown, dpo_gate
from engine.store.catalog import Catalog
from engine.store.lineage import lineage as lineage_of, render
from pipelines.cli.result import report
from tests.test_device import random_adapter

SFT_SOURCES = ["alpaca_tasks", "sharegpt_tasks", "openai_tasks"]
OFF = ("reward_model", "dpo_adapter", "eval_dpo", "grpo_adapter", "eval_grpo")


def test_merge_with_only_the_sft_stage_gives_the_adapter_model_s_logits(tiny_model_dir, formatted_dir, tmp_path):
    from engine.export.merge import merge
    from engine.models.load import load_causal_lm
    sft = random_adapter(tiny_model_dir, tmp_path / "sft", 1)
    metrics = merge(tiny_model_dir, [sft], formatted_dir, tmp_path / "merged")
    assert metrics["max_logit_diff"] < 1e-3
    ids = torch.tensor([[1, 2, 3, 4]])
    base, merged = load_causal_lm(tiny_model_dir, torch.float32), load_causal_lm(tmp_path / "merged", torch.float32)
    assert not torch.allclose(base(ids).logits, merged(ids).logits)  # the SFT adapter is in the weights


def test_without_dpo_or_a_reward_model_the_gate_is_not_evaluated_and_the_table_shows_dashes():
    sft = {"perplexity": 9.0, "accuracy": 0.5, "similarity": 0.7, "reward_score": None}
    off = {"configured": False, "reason": "dpo (or kto) is not in the recipe's stages"}
    assert dpo_gate(sft, off, 0.0) == (None, "not configured: dpo (or kto) is not in the recipe's stages")
    passed, detail = dpo_gate(sft, {**sft, "reward_score": None}, 0.0)
    assert passed is None and detail.startswith("not configured: rm is not in the recipe's stages")
    lines = comparison_markdown({"sft": sft, "dpo": off}).splitlines()
    assert lines[2:] == ["| sft | 9.0 | 0.5 | 0.7 | - |", "| dpo | - | - | - | - |"]


@pytest.fixture(scope="module")
def sft_only_run(tmp_path_factory):
    from pipelines.definitions import ASSETS, resources
    home = tmp_path_factory.mktemp("sft_only")
    shutil.copytree("data", home / "data")
    recipe = yaml.safe_load(Path("pipelines/recipes/tiny.yaml").read_text())
    recipe["data"].update(dataset_dir=str(home / "data"), dataset=SFT_SOURCES)
    recipe["stages"] = ["sft"]
    (home / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    root = home / "tuneline"
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources(str(home / "recipe.yaml"), str(root)), instance=instance,
                                raise_on_error=False)
    return root, result


@pytest.mark.slow
def test_an_sft_only_recipe_runs_to_deployment_and_the_rest_says_not_configured(sft_only_run):
    root, result = sft_only_run
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks if not c.passed]
    metadata = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                for e in result.get_asset_materialization_events()}
    for name in OFF:
        assert metadata[name]["configured"] is False and metadata[name]["summary"].startswith("not configured: ")
    # off is not passed: the checks of what the recipe turns off have no evaluation at all, the asset names them
    off = {("reward_model", "accuracy_above_bound"), ("dpo_adapter", "reward_margin_above_bound"),
           ("model_comparison", "dpo_not_worse_than_sft")}
    assert off.isdisjoint({(c.asset_key.to_user_string(), c.check_name) for c in checks})
    for asset, name in off:
        assert metadata[asset][CHECKS_NOT_CONFIGURED][name].startswith("not configured: "), metadata[asset]
    recorded = Catalog(root / "catalog.duckdb").query(
        "SELECT check_name, passed, detail FROM check_results WHERE check_name IN (?, ?, ?)", [n for _, n in off])
    assert {name for name, _, _ in recorded} == {n for _, n in off}
    assert all(passed is None and detail.startswith("not configured: ") for _, passed, detail in recorded)
    off_count = sum(len(m.get(CHECKS_NOT_CONFIGURED, {})) for m in metadata.values())
    assert report(result, 1.0).splitlines()[-1].startswith(
        f"checks: {len(checks)} passed, 0 failed, {off_count} not configured (")
    assert "reward_model: accuracy_above_bound" in report(result, 1.0).splitlines()[-1]
    shown = render(lineage_of(Catalog(root / "catalog.duckdb"), metadata["model_comparison"]["fingerprint"]))
    assert "dpo_not_worse_than_sft not configured" in shown and "gptq_within_budget ok" in shown
    assert metadata["eval_sft"]["reward_score"] is None
    assert "| dpo | - |" in metadata["model_comparison"]["comparison"]
    config = json.loads((Path(metadata["deployment"]["path"]) / "serve.json").read_text())
    assert config["model_path"] == str(Path(metadata["awq_model"]["path"]).resolve())
    assert metadata["deployment"]["smoke_answer"].strip()  # the served SFT export answered, not with nothing
    merged = Path(metadata["merged_model"]["path"])
    lineage = json.loads((merged / "lineage.json").read_text())
    assert "dpo_adapter" not in json.dumps(lineage) and "sft_adapter" in json.dumps(lineage)
