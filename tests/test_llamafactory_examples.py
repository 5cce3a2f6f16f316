"""LLaMA-Factory's example kinds, imported from LLaMA-Factory-style YAMLs (written here, in the shape of its
examples/ folder: pre-training, LoRA SFT, full SFT, reward model, DPO, KTO, a LoRA merge and a GPTQ export), run on
its stock demo files with the tiny model as LLaMA-Factory runs them: only the stages each file names, each from the
model it names, and each reaches deployment with every check passing, none of its rows or pairs dropped by a trainer
(every_row_trained / every_pair_trained / every_example_trained are among the checks)."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from engine.importers.llamafactory import import_configs
from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow

STOCK = Path("tests/fixtures/llamafactory/data")
# as in LLaMA-Factory's examples/train_lora/*.yaml, with the tiny preset for the checkpoint
COMMON = """\
model_name_or_path: tiny
trust_remote_code: true
template: qwen
cutoff_len: 256
overwrite_cache: true
preprocessing_num_workers: 16
output_dir: saves/tiny/{kind}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
per_device_train_batch_size: 8
gradient_accumulation_steps: 1
learning_rate: 3.0e-3
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
"""
KINDS = {
    "pretrain": "stage: pt\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\ndataset: c4_demo\n",
    "lora_sft": "stage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\n"
                "dataset: identity,alpaca_en_demo\nmax_samples: 1000\n",
    "full_sft": "stage: sft\ndo_train: true\nfinetuning_type: full\ndataset: identity,alpaca_en_demo\n",
    "reward": "stage: rm\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\ndataset: dpo_en_demo\n",
    "dpo": "stage: dpo\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\npref_beta: 0.1\n"
           "pref_loss: sigmoid\ndataset: dpo_en_demo\n",
    "kto": "stage: kto\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\npref_beta: 0.1\n"
           "dataset: kto_en_demo\n",
}
# examples/merge_lora/*.yaml and examples/train_lora/*_gptq export configs: no stage, an export directory
MERGE = ("model_name_or_path: tiny\nadapter_name_or_path: {adapter}\ntemplate: qwen\ntrust_remote_code: true\n"
         "export_dir: output/tiny_lora_sft\nexport_size: 5\nexport_device: cpu\nexport_legacy_format: false\n")
GPTQ = ("model_name_or_path: tiny\ntemplate: qwen\ntrust_remote_code: true\nexport_dir: output/tiny_gptq\n"
        "export_quantization_bit: 4\nexport_quantization_dataset: data/c4_demo.jsonl\nexport_size: 5\n"
        "export_device: cpu\nexport_legacy_format: false\n")
EVAL_DATASET = ["identity", "alpaca_en_demo"]  # for the configs that name no chat data (pre-training, exports)
# a few steps each, small evaluations; the quality bounds (check and gate thresholds, never fingerprinted; the
# served answer's eos too) are opened: a model trained from random weights for a few steps proves the path, not
# quality. SFT's and pt's eval loss below the base's, and every trained-count check, still have to hold.
FAST = {"pt.max_steps": 4, "sft.max_steps": 10, "reward.max_steps": 4, "dpo.max_steps": 4,
        "dpo.precompute_ref_log_probs": False, "reward.min_accuracy": 0.0, "dpo.min_reward_gain": -1000.0,
        "dpo.min_reward_margin": -1000.0, "data.min_eval_pairs": 8, "quantize.calibration_samples": 4,
        "quantize.max_ppl_ratio": 1000.0, "quantize.max_accuracy_drop": 1.0, "evaluation.max_samples": 4,
        "evaluation.max_new_tokens": 8, "serve.smoke_requires_eos": False}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("lf_examples")
    shutil.copytree(STOCK, root / "data")
    return root


def imported(home: Path, kind: str, text: str, eval_dataset=None) -> tuple[Path, dict]:
    """The config written as a user would, imported as `tuneline import-llamafactory` does."""
    config = home / f"{kind}.yaml"
    config.write_text(text if kind in ("merge", "gptq_export") else COMMON.format(kind=kind) + text)
    recipe_text, _ = import_configs([config], eval_dataset)
    recipe = yaml.safe_load(recipe_text)
    recipe["data"]["dataset_dir"] = str(home / "data")
    path = home / f"{kind}-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, recipe


def materialize(home: Path, recipe: Path):
    with dg.instance_for_test() as instance:
        return dg.materialize(ASSETS, resources=resources(str(recipe), str(home / "tuneline"), FAST),
                              instance=instance, raise_on_error=False)


def outcome(result) -> tuple[list, dict, dict]:
    """(step failures, {asset: metadata}, {check name: (passed, description)})."""
    failed = [(e.step_key, e.event_specific_data.error.message) for e in result.all_events if e.is_step_failure]
    assets = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
              for e in result.get_asset_materialization_events()}
    evaluations = [e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    checks = {f"{c.asset_key.to_user_string()}.{c.check_name}": (c.passed, c.metadata["detail"].value)
              for c in evaluations}
    return failed, assets, checks


def reaches_deployment(result) -> dict:
    failed, assets, checks = outcome(result)
    assert failed == []
    assert {name: c for name, c in checks.items() if not c[0]} == {}
    assert "deployment" in assets
    return checks


def configured(checks: dict, asset: str) -> bool:
    """Whether `asset`'s checks were evaluated: a stage the recipe turns off has none (off is not passed)."""
    return any(name.startswith(asset + ".") for name in checks)


@pytest.fixture(scope="module")
def lora_sft(home):
    path, recipe = imported(home, "lora_sft", KINDS["lora_sft"])
    return recipe, materialize(home, path)


def test_lora_sft_trains_only_sft(lora_sft):
    recipe, result = lora_sft
    assert recipe["stages"] == ["sft"] and recipe["data"]["max_samples"] == 1000
    checks = reaches_deployment(result)
    assert checks["sft_adapter.every_row_trained"][0]
    assert not configured(checks, "reward_model") and not configured(checks, "dpo_adapter")


@pytest.mark.parametrize("kind", ["pretrain", "full_sft", "reward", "dpo", "kto"])
def test_each_training_example_runs_as_llamafactory_runs_it(home, kind):
    path, recipe = imported(home, kind, KINDS[kind], EVAL_DATASET if kind == "pretrain" else None)
    expected = {"pretrain": ["pt"], "full_sft": ["sft"], "reward": ["rm"], "dpo": ["dpo"], "kto": ["kto"]}[kind]
    assert recipe["stages"] == expected
    checks = reaches_deployment(materialize(home, path))
    assert configured(checks, "sft_adapter") == (kind == "full_sft")
    trained = {"reward": "reward_model.every_pair_trained", "dpo": "dpo_adapter.every_example_trained",
               "kto": "dpo_adapter.every_example_trained", "full_sft": "sft_adapter.every_row_trained"}
    if kind in trained:
        passed, detail = checks[trained[kind]]
        assert passed and detail.startswith("trained on ") and "dropped" not in detail


def test_a_lora_merge_config_exports_the_base_with_that_adapter(home, lora_sft):
    _, result = lora_sft
    sft = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "sft_adapter")
    adapter = Path(sft.materialization.metadata["path"].value) / "adapter"
    path, recipe = imported(home, "merge", MERGE.format(adapter=adapter), EVAL_DATASET)
    assert recipe["stages"] == [] and recipe["model"]["adapter_name_or_path"] == str(adapter)
    checks = reaches_deployment(materialize(home, path))
    assert not configured(checks, "sft_adapter")


def test_a_gptq_export_config_serves_the_gptq_export(home):
    path, recipe = imported(home, "gptq_export", GPTQ, EVAL_DATASET)
    assert recipe["stages"] == [] and recipe["serve"]["model"] == "gptq"
    reaches_deployment(materialize(home, path))
