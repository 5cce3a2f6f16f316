"""An export's model card: its YAML front matter is the Hub's model card metadata (lineage to the base model and the
data, the relation of each export to the base, the task and library, and a model-index of its results)."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from engine.export.docs import deployment_card, hub_model_id, write_export_docs

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def lineage(base: str) -> dict:
    node = {"path": "/x", "config": {}, "versions": {}, "checks": {}}
    return {"base_model": base,
            "artifacts": {"base_model": {**node, "fingerprint": "b" * 16, "config": {"model.model_name_or_path": base}},
                          "formatted_data": {**node, "fingerprint": "f" * 16},
                          "sft_adapter": {**node, "fingerprint": "s" * 16, "checks": {"eval_loss_below_base": True}},
                          "dpo_adapter": {**node, "fingerprint": "d" * 16}},
            "data": {"identity": {"raw_rows": 91, "train_rows": 80, "eval_rows": 10, "quarantined": {"x": 1}},
                     "dpo_en_demo": {"raw_rows": 234, "train_rows": 200, "eval_rows": 30}}}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.mark.parametrize(("export", "relation"), [("merged_model", "finetune"), ("gptq_model", "quantized"),
                                                  ("awq_model", "quantized")])
def test_each_export_names_its_base_its_relation_and_its_data(tmp_path, export, relation):
    write_export_docs(tmp_path, f"{export} of smol", lineage(BASE), {"eval_perplexity": 3.25, "size_bytes": 9}, export)
    meta = front_matter((tmp_path / "README.md").read_text())
    assert meta["base_model"] == BASE and meta["base_model_relation"] == relation
    assert meta["datasets"] == ["dpo_en_demo", "identity"]
    assert (meta["pipeline_tag"], meta["library_name"]) == ("text-generation", "transformers")
    [entry] = meta["model-index"]
    assert entry["name"] == f"{export} of smol"
    [result] = entry["results"]
    assert result["dataset"] == {"type": "tuneline/formatted_data", "split": "eval", "revision": "f" * 16,
                                 "name": "held-out SFT split of dpo_en_demo, identity"}
    assert result["metrics"][0]["type"] == "perplexity" and result["metrics"][0]["value"] == 3.25
    card = ModelCard.load(tmp_path / "README.md")  # the Hub client's own parser accepts it, model-index included
    assert card.data.base_model == BASE and card.data.eval_results[0].metric_value == 3.25
    assert json.loads((tmp_path / "lineage.json").read_text())["export"]["asset"] == export


def test_a_base_model_without_a_hub_id_is_left_out_and_said(tmp_path):
    write_export_docs(tmp_path, "merged", lineage("tiny"), {"eval_perplexity": 2.0}, "merged_model")
    text = (tmp_path / "README.md").read_text()
    meta = front_matter(text)
    assert "base_model" not in meta and "base_model_relation" not in meta
    assert meta["datasets"] == ["dpo_en_demo", "identity"]
    assert "not a Hugging Face Hub model, so the metadata names no `base_model`" in text


def test_the_hub_id_of_a_base_model(tmp_path):
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert hub_model_id(str(snapshot)) == BASE  # a checkpoint from the Hub cache
    assert hub_model_id(BASE) == BASE
    assert hub_model_id("tiny") is None and hub_model_id(str(tmp_path)) is None  # the preset; a local checkpoint
    assert hub_model_id(None) is None


def test_the_deployment_card_carries_the_evaluation_and_the_gates(tmp_path):
    write_export_docs(tmp_path, "AWQ 4-bit export", lineage(BASE), {"eval_perplexity": 3.3}, "awq_model")
    evaluation = {"accuracy": 0.75, "perplexity": 3.31, "similarity": 0.9, "reward_score": None, "samples": 128}
    gates = {"awq_within_budget": (True, "awq: accuracy 0.75 vs merged 0.76: dropped 0.0100, allowed 0.05"),
             "dpo_not_worse_than_sft": (True, "DPO mean reward score 0.2 vs SFT 0.1: gain +0.1000")}
    text = deployment_card(tmp_path, evaluation, gates)
    (tmp_path / "card.md").write_text(text)
    meta = front_matter(text)
    assert meta["base_model"] == BASE and meta["base_model_relation"] == "quantized"
    metrics = {m["type"]: m for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert {k: m["value"] for k, m in metrics.items()} == {
        "accuracy": 0.75, "perplexity": 3.31, "similarity": 0.9, "awq_within_budget": "passed",
        "dpo_not_worse_than_sft": "passed"}  # no reward model: no reward score
    assert metrics["awq_within_budget"]["name"] == gates["awq_within_budget"][1]
    assert "| awq_within_budget | passed | awq: accuracy 0.75 vs merged 0.76" in text
    assert len(ModelCard.load(tmp_path / "card.md").data.eval_results) == 5
