"""LLaMA-Factory's own registry, unchanged, with its demo files, runs the whole graph on the tiny model.

tests/fixtures/llamafactory/data holds LLaMA-Factory's data/dataset_info.json and the text demo files it registers,
byte for byte (see the README there). The recipe points data.dataset_dir at a copy and selects the demo datasets by
their registry names; every other entry of the stock registry (hub datasets, the multimodal demos, files not
copied) is listed as not used and never stops the run. Then, through Dagster as `make run` does: every asset
materializes; every record of every selected file is stored or quarantined with a reason; and every text that
reached training equals the file's text byte for byte, except the ones the catalog's `rewrites` table lists.
"""

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml

from engine.store.catalog import Catalog
from engine.store.lineage import lineage
from engine.store.tables import table_dicts
from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow

STOCK = Path("tests/fixtures/llamafactory/data")
# git blob ids at hiyouga/LLaMA-Factory ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30 (`git ls-tree HEAD data/`)
STOCK_BLOBS = {
    "dataset_info.json": "4d105699026995d1455f6ecb44e2702bef97a7c3",
    "alpaca_en_demo.json": "b645c416b5204f25fab66f839a44203a9ad5a2a4",
    "identity.json": "6210846ced4ad7b8276981ddf7273a0e4373a1f3",
    "glaive_toolcall_en_demo.json": "1b3e8e3e058e5a91a689a268eaa6254c63c1d6a4",
    "dpo_en_demo.json": "82769a63b98ef967480ac515bd05602a9808bfca",
    "kto_en_demo.json": "ce8a408002d2ef8561d50d19c305f10b55dd8567",
    "c4_demo.jsonl": "36cbbad705bdf3396bfd4f9e661823de224feedd",
}
SELECTED = ["alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo"]
ALPACA_STYLE = ("alpaca_en_demo", "identity")
ALL_ASSETS = {"base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter", "reward_model",
              "dpo_adapter", "merged_model", "gptq_model", "awq_model", "deployment", "eval_base", "eval_sft",
              "eval_dpo", "eval_merged", "eval_gptq", "eval_awq", "model_comparison",
              "ppo_adapter", "eval_ppo", "grpo_adapter", "eval_grpo"}  # the online RL stages: off, "not configured"
RL_OFF_CHECKS = {("ppo_adapter", "finite_losses"), ("ppo_adapter", "every_prompt_offered"),
                 ("grpo_adapter", "every_prompt_offered"),
                 ("model_comparison", "ppo_not_worse_than_sft"), ("model_comparison", "grpo_not_worse_than_sft")}
# The tiny model starts from random weights and trains a few dozen steps: this run proves the data path, not model
# quality (on real data a few DPO steps leave the held-out margin at noise around 0). So the quality thresholds
# (check and gate keys, never fingerprinted; the served answer's eos too) are opened; SFT's eval loss below the base
# model's still has to hold.
FAST = {
    "pt": {"dataset": ["c4_demo"], "max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 3.0e-3},
    "sft": {"max_steps": 10, "per_device_train_batch_size": 16},
    "reward": {"max_steps": 4, "per_device_train_batch_size": 8, "min_accuracy": 0.0},
    "dpo": {"max_steps": 4, "per_device_train_batch_size": 8, "precompute_ref_log_probs": False,
            "min_reward_gain": -1000.0, "min_reward_margin": -1000.0},
    "quantize": {"calibration_samples": 4, "max_ppl_ratio": 1000.0, "max_accuracy_drop": 1.0},
    "evaluation": {"max_samples": 4, "max_new_tokens": 8},
    "serve": {"smoke_requires_eos": False},  # its answer runs on to the token limit ("the the the ..."): said so
}


def git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A copy of the stock folder, and a recipe: the tiny one, pointed at it, trained for a few steps."""
    home = tmp_path_factory.mktemp("lf")
    shutil.copytree(STOCK, home / "data")
    recipe = yaml.safe_load(Path("pipelines/recipes/tiny.yaml").read_text())
    recipe["name"] = "lf-stock"
    # dpo_en_demo's 300 pairs leave ~30 for the eval split at val_size 0.1: below the tiny recipe's 32 (a check
    # threshold, opened here like the quality ones)
    recipe["data"].update(dataset_dir=str(home / "data"), dataset_info="dataset_info.json", dataset=SELECTED,
                          min_eval_pairs=8)
    for section, keys in FAST.items():
        recipe[section] = {**recipe.get(section, {}), **keys}
    # the tiny recipe's cleaning as shipped: no length cap (formatted_data truncates at cutoff_len, as LLaMA-Factory
    # does), so its bounds pass on these files (tests/test_clean_meaning.py counts what each step removes)
    path = home / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return home, str(path)


def materialize(root, recipe, overrides=None, selection=None):
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources(recipe, str(root), overrides), instance=instance,
                                selection=selection, raise_on_error=False)
        print_step_seconds(instance.all_logs(result.run_id))
        return result


def print_step_seconds(entries) -> None:
    """Seconds per step (shown with -s, or when a test fails): where this test's time goes."""
    started = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        if event.event_type_value == "STEP_START":
            started[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in started:
            print(f"{entry.step_key}: {entry.timestamp - started[entry.step_key]:.1f} s")


def failures(result) -> list:
    return [(e.step_key, getattr(e.event_specific_data, "error", None) and e.event_specific_data.error.message)
            for e in result.all_events if e.is_step_failure]


def artifacts_of(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def run(stock):
    root = stock[0] / "tuneline"
    result = materialize(root, stock[1])
    return root, result, artifacts_of(result)


def file_records(name: str) -> list:
    path = STOCK / {"c4_demo": "c4_demo.jsonl"}.get(name, f"{name}.json")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def expected_fields(name: str, record: dict) -> dict:
    """What LLaMA-Factory's converters make of a stock record (src/llamafactory/data/converter.py), written out here
    independently of tuneline's ingest: {field name as the rewrites table names it: text}, and the roles."""
    if name in ALPACA_STYLE:
        assert set(record) == {"instruction", "input", "output"}  # no system or history column in these files
        prompt = f"{record['instruction']}\n{record['input']}" if record["input"] else record["instruction"]
        turns = [("user", prompt), ("assistant", record["output"])]
        extra = {}
    elif name == "kto_en_demo":
        turns = [(m["role"], m["content"]) for m in record["messages"]]
        extra = {"label": "true" if record["label"] else "false"}
    else:  # glaive_toolcall_en_demo, dpo_en_demo: sharegpt with LLaMA-Factory's default tags
        roles = {"human": "user", "gpt": "assistant", "function_call": "function_call", "observation": "observation",
                 "system": "system"}  # a first system turn is the system prompt (dpo_en_demo has 80)
        turns = [(roles[t["from"]], t["value"]) for t in record["conversations"]]
        extra = {}
        if name == "dpo_en_demo":
            extra = {"chosen": record["chosen"]["value"], "rejected": record["rejected"]["value"]}
        tools = record.get("tools")
        # the tools schema as the file orders it (the chat template renders it): parsed, never re-sorted
        extra["tools"] = json.dumps(json.loads(tools), ensure_ascii=False) if tools not in (None, "", []) else None
    fields = {f"messages[{i}].content": text for i, (_, text) in enumerate(turns)}
    return {"roles": [role for role, _ in turns], **fields, **extra}


def kept_fields(row: dict) -> dict:
    messages = json.loads(row["messages"])
    fields = {f"messages[{i}].content": m["content"] for i, m in enumerate(messages)}
    extra = {key: row[key] for key in ("chosen", "rejected") if row[key] is not None}
    if row["kind"] == "kto":
        extra["label"] = row["label"]
    if row["source"] == "glaive_toolcall_en_demo" or row["source"] == "dpo_en_demo":
        extra["tools"] = row["tools"]
    return {"roles": [m["role"] for m in messages], **fields, **extra}


def unellipsis(excerpt: str) -> str:
    return excerpt.removeprefix("…").removesuffix("…")


def test_the_fixture_is_llamafactory_s_files_byte_for_byte():
    assert {p.name for p in STOCK.iterdir()} == {*STOCK_BLOBS, "README.md"}
    assert {name: git_blob(STOCK / name) for name in STOCK_BLOBS} == STOCK_BLOBS
    registry = json.loads((STOCK / "dataset_info.json").read_text())
    assert len(registry) > 50 and {"mllm_demo", "mllm_video_demo", "alpaca_en", "wiki_demo"} <= set(registry)


def test_every_asset_materializes_and_every_check_passes(run):
    _, result, meta = run
    assert result.success, failures(result)
    assert set(meta) == ALL_ASSETS  # deployment included: the gates let it through
    assert meta["deployment"]["smoke_answer"].strip()  # the served export answered a chat completion, not with nothing
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata) for e in result.get_asset_check_evaluations()
              if not e.passed]
    assert failed == []
    # every check evaluated but those of the off online RL stages (off is not passed)
    assert {(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations()} == {
        (a.key.to_user_string(), spec.name) for a in ASSETS for spec in a.check_specs} - RL_OFF_CHECKS
    pt = json.loads((Path(meta["pt_model"]["path"]) / "manifest.json").read_text())["metrics"]
    assert pt["continued_pretraining"] is True  # on c4_demo, LLaMA-Factory's pt demo


def test_unselected_entries_are_listed_as_not_used_and_never_stop_the_run(run):
    _, _, meta = run
    manifest = json.loads((Path(meta["raw_data"]["path"]) / "manifest.json").read_text())
    not_used = {u["name"]: u["reason"] for u in manifest["metrics"]["not_used"]}
    registry = json.loads((STOCK / "dataset_info.json").read_text())
    assert set(not_used) == set(registry) - set(SELECTED)
    for name in ("mllm_demo", "mllm_audio_demo", "mllm_video_demo", "mllm_video_audio_demo"):
        assert not_used[name].startswith("not in data.dataset; multimodal"), not_used[name]
    assert "hf_hub_url" in not_used["alpaca_en"]
    assert not (STOCK / "mllm_demo.json").exists()  # registered, not copied, not needed
    assert "| mllm_demo | not in data.dataset; multimodal (images columns) |" in meta["raw_data"]["not_used"]


def test_every_record_of_every_selected_file_is_stored_or_quarantined(run):
    root, _, meta = run
    catalog = Catalog(root / "catalog.duckdb")
    raw = meta["raw_data"]["fingerprint"]
    stored = dict(catalog.query("SELECT source, count(*) FROM raw_rows WHERE artifact = ? GROUP BY source", [raw]))
    quarantined = dict(catalog.query("SELECT source, count(*) FROM quarantine WHERE artifact = ? GROUP BY source",
                                     [raw]))
    assert {name: stored.get(name, 0) + quarantined.get(name, 0) for name in SELECTED} == \
        {name: len(file_records(name)) for name in SELECTED}
    assert quarantined == {}  # LLaMA-Factory's demo files are well-formed: ingest takes every record
    # clean_data: per source, rows in = kept + quarantined, each quarantined row with its step and reason
    clean = Path(meta["clean_data"]["path"])
    kept = Counter(r["source"] for r in list(table_dicts(clean, "rows")))
    dropped = list(table_dicts(clean, "quarantine"))
    assert all(q["reason"] and q["stage"].startswith("clean:") and q["detail"] for q in dropped)
    assert {name: kept[name] + sum(q["source"] == name for q in dropped) for name in SELECTED} == stored
    # pt_model: every line of c4_demo.jsonl was trained on (train or eval) or quarantined
    pt = json.loads((Path(meta["pt_model"]["path"]) / "manifest.json").read_text())["metrics"]
    assert pt["train_texts"] + pt["eval_texts"] + pt["quarantined"] == len(file_records("c4_demo"))
    record = lineage(catalog, meta["merged_model"]["fingerprint"])
    assert set(record["data"]) == set(SELECTED)


def test_no_text_changed_unless_the_rewrites_table_lists_it(run):
    root, _, meta = run
    catalog = Catalog(root / "catalog.duckdb")
    rewrites = catalog.query("SELECT source, row_id, step, field, before, after FROM rewrites WHERE artifact = ?",
                             [meta["clean_data"]["fingerprint"]])
    listed = {(row_id, field): (step, before, after) for _, row_id, step, field, before, after in rewrites}
    assert len(listed) == len(rewrites)
    kept = {r["row_id"]: r for r in list(table_dicts(Path(meta["clean_data"]["path"]), "rows"))}
    changed, compared = set(), Counter()
    for name in SELECTED:
        for index, record in enumerate(file_records(name)):
            row = kept.get(f"{name}:{index}")
            if row is None:
                continue  # quarantined, with its reason (test above)
            expected, got = expected_fields(name, record), kept_fields(row)
            assert got["roles"] == expected["roles"] and set(got) == set(expected), row["row_id"]
            for field, text in expected.items():
                if field != "roles" and got[field] != text:
                    changed.add((row["row_id"], field))
            compared[name] += 1
    assert compared == {name: kept_count for name, kept_count in Counter(r["source"] for r in kept.values()).items()}
    # every change is listed, and every listed rewrite of a kept row is a change (a row rewritten by one step may
    # be removed by a later one, e.g. as a duplicate: it is in the quarantine)
    assert changed == {key for key in listed if key[0] in kept}
    dropped = {q["row_id"] for q in list(table_dicts(Path(meta["clean_data"]["path"]), "quarantine"))}
    assert {row_id for row_id, _ in listed} - set(kept) <= dropped
    for (row_id, field), (step, before, after) in listed.items():
        assert step in {"normalize", "pii"}, (row_id, step)  # the tiny recipe's rewriting steps
        name, index = row_id.rsplit(":", 1)
        original = expected_fields(name, file_records(name)[int(index)])[field]
        assert unellipsis(before) in original
        if row_id in kept:
            assert unellipsis(after) in kept_fields(kept[row_id])[field]
    # what the stock files contain today: PII-looking prose scrubbed by the pii step (fake e-mails, generated
    # passwords); normalize (NFC, CRLF) had nothing to do
    assert {step for step, _, _ in listed.values()} == {"pii"}


def test_code_newlines_tool_schemas_and_cjk_reach_training_byte_identical(run):
    _, _, meta = run
    kept = {r["row_id"]: r for r in list(table_dicts(Path(meta["clean_data"]["path"]), "rows"))}
    alpaca = file_records("alpaca_en_demo")
    code = [i for i, r in enumerate(alpaca) if "```" in r["output"] or "\n    " in r["output"]]
    sample = [i for i in code if f"alpaca_en_demo:{i}" in kept]
    assert len(sample) >= 20
    for i in sample:
        answer = json.loads(kept[f"alpaca_en_demo:{i}"]["messages"])[-1]["content"]
        assert answer.encode() == alpaca[i]["output"].encode()
    glaive = file_records("glaive_toolcall_en_demo")
    with_tools = [(i, r) for i, r in enumerate(glaive) if r["tools"] and f"glaive_toolcall_en_demo:{i}" in kept]
    assert len(with_tools) > 100
    for i, r in with_tools:  # the schema in the file's key order (name, description, parameters), as LLaMA-Factory
        assert kept[f"glaive_toolcall_en_demo:{i}"]["tools"] == json.dumps(json.loads(r["tools"]), ensure_ascii=False)
    assert meta["formatted_data"]["path"]
    report = json.loads((Path(meta["formatted_data"]["path"]) / "manifest.json").read_text())["metrics"]
    assert report["tools_dropped_by_template"] == 0  # the tiny template renders every row's tools
    assert report["kto_train"] > 0 and report["preference_train"] > 0


def test_identity_placeholders_survive_byte_identical(run):
    """identity.json's {{name}} and {{author}} are for the user to fill in: LLaMA-Factory's trainer never substitutes
    them (its docs and its assistant skill suggest a search-and-replace over the file before training). tuneline does
    the same: it trains on the text as written, so the placeholders reach the training rows unchanged."""
    _, _, meta = run
    kept = {r["row_id"]: r for r in list(table_dicts(Path(meta["clean_data"]["path"]), "rows"))}
    identity = file_records("identity")
    survivors = [(i, r) for i, r in enumerate(identity) if f"identity:{i}" in kept]
    assert len(survivors) == len(identity)  # near_dedup never judges rows this short (`hi` / `hello`)
    assert sum("{{name}}" in r["output"] for _, r in survivors) >= 40
    for i, r in survivors:
        answer = json.loads(kept[f"identity:{i}"]["messages"])[-1]["content"]
        assert answer.encode() == r["output"].encode()  # placeholders, CJK punctuation and all
    assert any("，" in r["output"] for _, r in survivors)  # full-width punctuation kept (NFC, not NFKC)


def test_kto_demo_trains_the_preference_stage_with_the_kto_loss(run, stock):
    """LLaMA-Factory's kto stage: the same graph, dpo_adapter trained on kto_en_demo's labelled answers (everything
    upstream is reused from the run above)."""
    root, _, meta = run
    result = materialize(root, stock[1], {"stages": ["sft", "rm", "kto"], "dpo.pref_loss": "kto"},
                         selection=["dpo_adapter"])
    assert result.success, failures(result)
    kto = artifacts_of(result)["dpo_adapter"]
    assert kto["pref_loss"] == "kto" and kto["fingerprint"] != meta["dpo_adapter"]["fingerprint"]
    assert all(e.passed for e in result.get_asset_check_evaluations())
