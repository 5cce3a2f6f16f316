"""The whole graph on the tiny recipe through Dagster's materialize(), in a temporary artifact root."""

import json

import dagster as dg
import pytest
from pathlib import Path
from datasets import load_from_disk
from peft import PeftModel

from engine.catalog import Catalog
from engine.evaluate import greedy_answers
from engine.models import load_causal_lm, load_reward_model, load_tokenizer
from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow
ALL_ASSETS = {"base_model", "raw_data", "clean_data", "formatted_data", "sft_adapter", "reward_model", "dpo_adapter",
              "merged_model", "gptq_model", "awq_model"}


def materialize(root):
    with dg.instance_for_test() as instance:
        return dg.materialize(ASSETS, resources=resources("tiny", str(root)), instance=instance, raise_on_error=False)


def artifacts_of(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuneline")
    return root, materialize(root)


def test_every_asset_materializes_and_every_check_passes(first_run):
    _, result = first_run
    assert result.success
    assert set(artifacts_of(result)) == ALL_ASSETS
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == sum(len(a.check_specs) for a in ASSETS)
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata) for e in evaluations if not e.passed]
    assert failed == []
    assert not any(meta["cache_hit"] for meta in artifacts_of(result).values())


def test_training_really_learned(first_run):
    meta = artifacts_of(first_run[1])
    assert meta["sft_adapter"]["eval_loss_after"] < meta["sft_adapter"]["eval_loss_before"] - 1.0
    assert meta["reward_model"]["eval_accuracy"] > 0.6
    assert meta["dpo_adapter"]["eval_reward_margin"] > 0


def test_every_artifact_loads(first_run):
    meta = artifacts_of(first_run[1])
    path = {name: m["path"] for name, m in meta.items()}
    base = meta["base_model"]["model_dir"]
    tokenizer = load_tokenizer(base)
    for view in ("sft", "preference"):
        data = load_from_disk(f"{path['formatted_data']}/{view}")
        assert len(data["train"]) > 0 and len(data["eval"]) > 0
    PeftModel.from_pretrained(load_causal_lm(base), f"{path['sft_adapter']}/adapter")
    assert load_reward_model(path["reward_model"]).config.num_labels == 1
    prompt = [[{"role": "user", "content": "Add the two numbers.\n120 + 345"}]]
    for export in ("merged_model", "gptq_model", "awq_model"):
        model = load_causal_lm(path[export])
        assert isinstance(greedy_answers(model, tokenizer, prompt, max_new_tokens=4)[0], str)
        for name in ("lineage.json", "README.md", "chat_template.jinja", "generation_config.json"):
            assert (Path(path[export]) / name).is_file(), f"{export} lacks {name}"
    for export in ("gptq_model", "awq_model"):
        config = json.loads((Path(path[export]) / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
        assert meta[export]["size_bytes"] < meta[export]["merged_size_bytes"]


def test_lineage_and_catalog_account_for_every_row(first_run):
    root, result = first_run
    meta = artifacts_of(result)
    lineage = json.loads((Path(meta["merged_model"]["path"]) / "lineage.json").read_text())
    assert set(lineage["artifacts"]) == {"base_model", "raw_data", "clean_data", "formatted_data", "sft_adapter",
                                         "reward_model", "dpo_adapter"}
    assert set(lineage["data_rows_by_source"]) == {"alpaca_tasks", "sharegpt_tasks", "openai_tasks", "preference_tasks"}
    assert lineage["checks"]["sft_adapter"] == {"eval_loss_below_base": True}
    catalog = Catalog(root / "catalog.duckdb")
    raw_fp, clean_fp = meta["raw_data"]["fingerprint"], meta["clean_data"]["fingerprint"]
    (raw_rows,), = catalog.query("SELECT count(*) FROM raw_rows WHERE artifact = ?", [raw_fp])
    reasons = dict(catalog.query("SELECT reason, count(*) FROM quarantine WHERE artifact = ? GROUP BY reason", [clean_fp]))
    assert reasons["exact_duplicate"] > 0 and reasons["near_duplicate"] > 0
    (quarantined_raw,), = catalog.query("SELECT count(*) FROM quarantine WHERE artifact = ?", [raw_fp])
    assert raw_rows + quarantined_raw == 2863  # every row of the four sample files
    assert meta["clean_data"]["rows_out"] + sum(reasons.values()) == raw_rows
    (artifacts,), = catalog.query("SELECT count(DISTINCT asset) FROM artifacts")
    assert artifacts == len(ALL_ASSETS)


def test_second_materialization_is_a_cache_hit_for_every_asset(first_run):
    root, first = first_run
    dirs_before = sorted(p for p in (root / "artifacts").glob("*/*"))
    second = materialize(root)
    assert second.success
    meta = artifacts_of(second)
    assert {name: m["cache_hit"] for name, m in meta.items()} == {name: True for name in ALL_ASSETS}
    assert {n: m["fingerprint"] for n, m in meta.items()} == {n: m["fingerprint"] for n, m in artifacts_of(first).items()}
    assert sorted(p for p in (root / "artifacts").glob("*/*")) == dirs_before
    assert all(e.passed for e in second.get_asset_check_evaluations())
