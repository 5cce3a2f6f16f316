"""The whole graph on the tiny recipe through Dagster's materialize(), in a temporary artifact root."""

import importlib.util
import json
import math
import re
import shutil

import dagster as dg
import pytest
import torch
import yaml
from pathlib import Path
from datasets import load_from_disk
from peft import PeftModel

from engine.store.catalog import Catalog
from engine.recipe import load_recipe
from engine.evaluate.measure import greedy_answers
from engine.models.load import load_causal_lm, load_reward_model, load_tokenizer
from engine.store.lineage import lineage, write_training_rows
from pipelines.automation import incoming_data_sensor
from pipelines.definitions import ASSETS, full_pipeline, resources
from assets.resource import Tuneline
from tests.serving import ask, reference_answer

pytestmark = pytest.mark.slow
EVALS = {"eval_base", "eval_sft", "eval_dpo", "eval_merged", "eval_gptq", "eval_awq", "model_comparison"}
# the tiny recipe runs no ppo nor grpo: "not configured" records, made once
RL_OFF = {"ppo_adapter", "eval_ppo", "grpo_adapter", "eval_grpo"}
ALL_ASSETS = {"base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter", "reward_model",
              "dpo_adapter", *RL_OFF, "merged_model", "gptq_model", "awq_model", "deployment", *EVALS}


RUN_LOGS: dict[str, list[str]] = {}  # run id -> the run's log messages (what the UI's run log shows)


def materialize(root, recipe, overrides=None):
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources(recipe, str(root), overrides), instance=instance,
                                raise_on_error=False)
        RUN_LOGS[result.run_id] = [entry.user_message for entry in instance.all_logs(result.run_id)]
        return result


def artifacts_of(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The shipped sample data in a temp folder, plus an empty incoming-data folder registered as a source."""
    home = tmp_path_factory.mktemp("project")
    shutil.copytree("data", home / "data")
    (home / "data" / "incoming").mkdir()
    with (home / "data" / "datasets.yaml").open("a") as registry:
        registry.write("\nincoming:\n  file_name: incoming\n  formatting: sharegpt\n  columns: {messages: messages}\n"
                       "  tags: {role_tag: role, content_tag: content, user_tag: user, assistant_tag: assistant}\n")
    recipe = home / "recipe.yaml"
    tiny = yaml.safe_load(Path("pipelines/recipes/tiny.yaml").read_text())
    tiny["data"].update(dataset_dir=str(home / "data"), dataset=[*tiny["data"]["dataset"], "incoming"])
    recipe.write_text(yaml.safe_dump(tiny))
    return home, str(recipe)


@pytest.fixture(scope="module")
def first_run(project):
    root = project[0] / "tuneline"
    return root, materialize(root, project[1])


def test_every_asset_materializes_and_every_check_passes(first_run):
    _, result = first_run
    assert result.success, [(e.step_key, e.message, e.event_specific_data) for e in result.all_events if e.is_failure]
    assert set(artifacts_of(result)) == ALL_ASSETS
    evaluations = result.get_asset_check_evaluations()
    # every check evaluated but those of pt_model, ppo and grpo: they are off in the tiny recipe, and off is not passed
    assert {(e.asset_key, e.check_name) for e in evaluations} == {
        (a.key, spec.name) for a in ASSETS for spec in a.check_specs
        if a.key.to_user_string() not in ("pt_model", "ppo_adapter", "grpo_adapter")
        and spec.name not in ("ppo_not_worse_than_sft", "grpo_not_worse_than_sft")}
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata) for e in evaluations if not e.passed]
    assert failed == []
    assert not any(meta["cache_hit"] for meta in artifacts_of(result).values())


def test_training_progress_reaches_the_run_log_through_pipes(first_run):
    """The training child's progress lines (pipelines/train_process.py) arrive in the Dagster run's log."""
    logs = RUN_LOGS[first_run[1].run_id]
    for stage in ("sft", "reward", "dpo"):
        assert any(f"{stage}: step " in line and "loss" in line for line in logs), stage


@pytest.mark.parametrize("asset, picture", [("sft_adapter", "loss_curve"), ("reward_model", "loss_curve"),
                                            ("dpo_adapter", "loss_curve"), ("raw_data", "quarantine_reasons"),
                                            ("clean_data", "quarantine_reasons"), ("formatted_data", "token_lengths")])
def test_each_stage_shows_its_picture(first_run, asset, picture):
    """Each stage's picture is in its metadata small enough for the UI to show in place (an SVG under 1,000
    characters, tests/test_ui_curves.py shows it rendered), and its full-size PNG is in the artifact's plots/."""
    from urllib.parse import unquote
    meta = artifacts_of(first_run[1])[asset]
    prefix = f"![{picture}](data:image/svg+xml,"
    assert meta[picture].startswith(prefix) and meta[picture].endswith(")") and len(meta[picture]) < 1000
    assert unquote(meta[picture][len(prefix):-1]).startswith("<svg ")
    name = {"loss_curve": "loss.png", "quarantine_reasons": "quarantine.png", "token_lengths": "token_lengths.png"}
    png = (Path(meta["plots"]) / name[picture]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_training_really_learned(first_run):
    meta = artifacts_of(first_run[1])
    assert meta["sft_adapter"]["eval_loss_after"] < meta["sft_adapter"]["eval_loss_before"] - 1.0
    # numbers Dagster plots across materializations (floats, not text)
    assert meta["sft_adapter"]["eval_perplexity"] == pytest.approx(math.exp(meta["sft_adapter"]["eval_loss_after"]),
                                                                   rel=1e-3)
    assert meta["reward_model"]["eval_accuracy"] > 0.6
    assert meta["dpo_adapter"]["eval_reward_margin"] > 0


@pytest.mark.parametrize("asset", ["sft_adapter", "reward_model", "dpo_adapter"])
def test_each_training_stage_shows_its_throughput(first_run, asset):
    """Every training asset's metadata carries the numbers its run measured: steps and tokens per second."""
    meta = artifacts_of(first_run[1])[asset]
    assert meta["steps"] > 0 and meta["tokens_per_second"] > 0


def test_every_artifact_loads(first_run):
    meta = artifacts_of(first_run[1])
    path = {name: m["path"] for name, m in meta.items()}
    base = meta["base_model"]["model_dir"]
    tokenizer = load_tokenizer(base)
    for view in ("sft", "preference"):
        data = load_from_disk(f"{path['formatted_data']}/{view}")
        assert len(data["train"]) > 0 and len(data["eval"]) > 0
    sft = load_causal_lm(f"{path['sft_adapter']}/model")  # the tiny recipe fine-tunes SFT fully (random weights)
    PeftModel.from_pretrained(sft, f"{path['dpo_adapter']}/adapter")  # and DPO as a LoRA adapter on top
    assert load_reward_model(path["reward_model"]).config.num_labels == 1
    prompt = [[{"role": "user", "content": "Translate the last word into French.\nred cat"}]]
    for export in ("merged_model", "gptq_model", "awq_model"):  # the task the data teaches, kept through 4 bits
        model = load_causal_lm(path[export])  # (measured: 'chat' from every export of 3 runs, 1 and 2 epochs)
        assert greedy_answers(model, tokenizer, prompt, max_new_tokens=4)[0] == "chat", export
        for name in ("lineage.json", "README.md", "chat_template.jinja", "generation_config.json"):
            assert (Path(path[export]) / name).is_file(), f"{export} lacks {name}"
    for export in ("gptq_model", "awq_model"):
        config = json.loads((Path(path[export]) / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
        assert meta[export]["size_bytes"] < meta[export]["merged_size_bytes"]


def test_later_stages_leave_formatted_data_as_it_was_published(first_run):
    """SFT, the reward model and DPO train on formatted_data's views; the maps TRL runs on them (tokenization,
    reference log-probs) must not write datasets cache files into that shared, published artifact."""
    formatted = Path(artifacts_of(first_run[1])["formatted_data"]["path"])
    assert (formatted / "preference" / "train").is_dir()
    assert sorted(p.relative_to(formatted) for p in formatted.rglob("cache-*")) == []


def test_every_stage_is_evaluated_and_compared(first_run):
    meta = artifacts_of(first_run[1])
    for stage in ("base", "sft", "dpo", "merged", "gptq", "awq"):
        evaluation = meta[f"eval_{stage}"]
        assert evaluation["samples"] == 128 and 0 <= evaluation["accuracy"] <= evaluation["similarity"] <= 1
        assert evaluation["perplexity"] > 1
    assert meta["eval_sft"]["perplexity"] < meta["eval_base"]["perplexity"] / 5  # fine-tuning learned the task
    assert meta["eval_sft"]["similarity"] > meta["eval_base"]["similarity"]
    assert meta["eval_merged"]["perplexity"] == pytest.approx(meta["eval_dpo"]["perplexity"], rel=1e-3)
    # the demo shows learning: exact match on held-out questions from none to most, and kept through DPO and 4 bits
    assert meta["eval_base"]["accuracy"] <= 0.05 and meta["eval_sft"]["accuracy"] >= 0.5
    assert meta["eval_dpo"]["accuracy"] >= meta["eval_sft"]["accuracy"]
    for export in ("gptq", "awq"):
        assert meta[f"eval_{export}"]["accuracy"] >= meta["eval_merged"]["accuracy"] - 0.05  # quantize.max_accuracy_drop
    table = meta["model_comparison"]["comparison"].splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["base", "sft", "dpo", "ppo", "grpo", "merged",
                                                               "gptq", "awq"]  # ppo, grpo: off, a row of -


def test_the_deployment_serves_the_gated_awq_export(first_run):
    meta = artifacts_of(first_run[1])
    deployment = Path(meta["deployment"]["path"])
    config = json.loads((deployment / "serve.json").read_text())
    assert config["model_path"] == str(Path(meta["awq_model"]["path"]).resolve())
    assert config["quantization"] == "compressed-tensors" and config["served_model_name"] == "tiny-awq"
    assert config["port"] == 8000 and config["host"] == "127.0.0.1"
    assert "--quantization compressed-tensors" in meta["deployment"]["vllm_command"]
    command = meta["deployment"]["vllm_command"].strip("`\n").split()
    flags = dict(zip(command[3::2], command[4::2]))
    assert Path(command[2]).is_dir() and Path(flags["--chat-template"]).is_file()  # published paths, not .work-
    assert Path(flags["--chat-template"]).parent == deployment
    formatted = Path(meta["formatted_data"]["path"])
    row_id = meta["deployment"]["smoke_row_id"]
    assert row_id == load_from_disk(formatted / "sft")["eval"]["row_id"][0]
    # the trained tiny model answers the held-out smoke question as the data does (measured: 'dry' to "Give the
    # opposite of the last word.\nslow high big wet", in every run), and a user asking the same gets the same answer,
    # ended by the model's eos within the token limit
    answer = meta["deployment"]["smoke_answer"]
    assert answer.strip() and answer.strip() == reference_answer(Path(meta["clean_data"]["path"]), row_id).strip()
    smoke = json.loads((deployment / "manifest.json").read_text())["metrics"]["smoke"]
    assert ask(deployment, smoke["messages"]) == (answer, "stop")
    checks = {e.check_name: e for e in first_run[1].get_asset_check_evaluations()
              if e.asset_key.to_user_string() == "deployment"}
    vllm_runs = {"loads_in_vllm"} if torch.cuda.is_available() and importlib.util.find_spec("vllm") else set()
    assert set(checks) == {"serves_chat_completions", "config_compatible_with_vllm", *vllm_runs}
    assert all(c.passed for c in checks.values())
    if not vllm_runs:
        assert "vLLM was not run here" in checks["config_compatible_with_vllm"].metadata["detail"].value
    card = yaml.safe_load((deployment / "README.md").read_text().split("---\n", 2)[1])
    assert "base_model" not in card  # the tiny preset has no Hub id (a Hub checkpoint: tests/test_model_card.py)
    assert card["datasets"] == ["alpaca_tasks", "openai_tasks", "preference_tasks", "sharegpt_tasks"]
    gates = {m["type"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert {g: gates[g] for g in ("dpo_not_worse_than_sft", "gptq_within_budget", "awq_within_budget")} == {
        "dpo_not_worse_than_sft": "passed", "gptq_within_budget": "passed", "awq_within_budget": "passed"}


def test_a_failing_gate_stops_deployment_and_says_by_how_much(first_run, project):
    root, _ = first_run
    result = materialize(root, project[1], {"dpo.min_reward_gain": 100.0})
    gate = {e.check_name: e for e in result.get_asset_check_evaluations()
            if e.asset_key.to_user_string() == "model_comparison"}
    assert not gate["dpo_not_worse_than_sft"].passed
    assert "required >= +100.0000, short by" in gate["dpo_not_worse_than_sft"].metadata["detail"].value
    assert gate["gptq_within_budget"].passed and gate["awq_within_budget"].passed
    assert "deployment" not in artifacts_of(result)
    assert built(result) == set()  # a gate's threshold re-runs the gate, never a stage


def test_tuneline_eval_compare_prints_the_table_and_gates(first_run, project, tmp_path):
    import os
    import sys
    from tests.processes import run
    root, _ = first_run
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    result = run([sys.executable, "-m", "pipelines.cli", "eval", "--compare", "--recipe", project[1],
                  "--artifact-root", str(root)], timeout=600, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| model | perplexity | accuracy | similarity | reward score |" in result.stdout
    assert "pass  dpo_not_worse_than_sft: DPO mean reward score" in result.stdout
    assert "model_comparison cached" in result.stdout and "deployment" not in result.stdout


# README.md quotes what commands print in fenced blocks after `<!-- output of: tuneline ... -->`; each quoted line
# must still be printed by that command on the built home (numbers, paths, fingerprints and built/cached aside)
README_OUTPUT = re.compile(r"<!-- output of: (tuneline [^>]*?) -->\s*```\w*\n(.*?)```", re.S)


def normalized(line: str) -> str:
    line = re.sub(r"(?<![\w.])/[^\s,;)]+", "PATH", line)
    line = re.sub(r"\b[0-9a-f]{16}\b", "FP", line)
    line = re.sub(r"[-+]?\d[\d,.]*", "N", line)
    line = re.sub(r"\b(built|cached)\b", "STATUS", line)
    return " ".join(line.split())


def test_the_readme_s_quoted_output_is_what_the_commands_print(first_run, project, tmp_path):
    import os
    import sys
    from tests.processes import run
    root, _ = first_run
    quoted = README_OUTPUT.findall(Path("README.md").read_text())
    assert {command for command, _ in quoted} >= {"tuneline run", "tuneline eval --compare"}
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    for command, block in quoted:
        result = run([sys.executable, "-m", "pipelines.cli", *command.split()[1:], "--recipe", project[1],
                      "--artifact-root", str(root)], timeout=600, text=True, env=env)
        printed = {normalized(line) for line in (result.stdout + result.stderr).splitlines()}
        missing = [line for line in block.splitlines() if line.strip() and normalized(line) not in printed]
        assert not missing, f"{command}: README lines it no longer prints: {missing}\n{result.stdout[-3000:]}"


def test_lineage_and_catalog_account_for_every_row(first_run):
    root, result = first_run
    meta = artifacts_of(result)
    record = json.loads((Path(meta["merged_model"]["path"]) / "lineage.json").read_text())
    assert set(record["artifacts"]) == {"base_model", "raw_data", "clean_data", "formatted_data", "pt_model",
                                         "sft_adapter", "dpo_adapter"}
    assert set(record["data"]) == {"alpaca_tasks", "sharegpt_tasks", "openai_tasks", "preference_tasks"}
    assert record["artifacts"]["sft_adapter"]["checks"] == {"eval_loss_below_base": True, "every_row_trained": True}
    assert record["artifacts"]["sft_adapter"]["versions"]["trl"] == "1.16.0"
    assert record["artifacts"]["sft_adapter"]["config"]["sft"]["learning_rate"] == 3.0e-3  # the keys it was made with
    assert record["export"]["metrics"]["max_logit_diff"] == meta["merged_model"]["max_logit_diff"]
    assert record["base_model"] == "tiny"
    gptq = json.loads((Path(meta["gptq_model"]["path"]) / "lineage.json").read_text())
    assert gptq["artifacts"]["merged_model"]["fingerprint"] == meta["merged_model"]["fingerprint"]
    assert gptq["artifacts"]["merged_model"]["checks"] == {"logits_match_adapters": True}
    card = (Path(meta["gptq_model"]["path"]) / "README.md").read_text()
    assert "| alpaca_tasks |" in card and "logits_match_adapters ✓" in card
    catalog = Catalog(root / "catalog.duckdb")
    raw_fp, clean_fp = meta["raw_data"]["fingerprint"], meta["clean_data"]["fingerprint"]
    (raw_rows,), = catalog.query("SELECT count(*) FROM raw_rows WHERE artifact = ?", [raw_fp])
    reasons = dict(catalog.query("SELECT reason, count(*) FROM quarantine WHERE artifact = ? GROUP BY reason", [clean_fp]))
    assert reasons["exact_duplicate"] > 0 and reasons["near_duplicate"] > 0
    (quarantined_raw,), = catalog.query("SELECT count(*) FROM quarantine WHERE artifact = ?", [raw_fp])
    assert raw_rows + quarantined_raw == 2567  # every row of the four sample files
    assert meta["clean_data"]["rows_out"] + sum(reasons.values()) == raw_rows
    (artifacts,), = catalog.query("SELECT count(DISTINCT asset) FROM artifacts")
    assert artifacts == len(ALL_ASSETS)


def test_second_materialization_is_a_cache_hit_for_every_asset(first_run, project):
    root, first = first_run
    dirs_before = sorted(p for p in (root / "artifacts").glob("*/*"))
    second = materialize(root, project[1])
    assert second.success
    meta = artifacts_of(second)
    assert {name: m["cache_hit"] for name, m in meta.items()} == {name: True for name in ALL_ASSETS}
    assert {n: m["fingerprint"] for n, m in meta.items()} == {n: m["fingerprint"] for n, m in artifacts_of(first).items()}
    assert sorted(p for p in (root / "artifacts").glob("*/*")) == dirs_before
    assert all(e.passed for e in second.get_asset_check_evaluations())


def test_a_deleted_catalog_is_re_recorded_and_lineage_is_unchanged(first_run, project, tmp_path):
    root, first = first_run
    catalog = Catalog(root / "catalog.duckdb")
    merged = artifacts_of(first)["merged_model"]["fingerprint"]
    before = lineage(catalog, merged)
    write_training_rows(catalog, merged, tmp_path / "before.csv")
    (root / "catalog.duckdb").unlink()
    again = materialize(root, project[1])
    assert again.success and built(again) == set()
    assert lineage(catalog, merged) == before
    write_training_rows(catalog, merged, tmp_path / "after.csv")
    assert (tmp_path / "after.csv").read_text() == (tmp_path / "before.csv").read_text()


def built(result) -> set[str]:
    return {name for name, meta in artifacts_of(result).items() if not meta["cache_hit"]}


def test_changing_the_sft_learning_rate_redoes_only_sft_and_downstream(first_run, project):
    root, first = first_run
    # what rebuilds is under test, not quality: at this learning rate DPO scored a little below SFT (the tiny
    # recipe's DPO gate at 0 failed it), so the gate is opened (a threshold: it rebuilds nothing)
    result = materialize(root, project[1], {"sft.learning_rate": 2.0e-3, "dpo.min_reward_gain": -1.0})
    assert result.success
    assert built(result) == {"sft_adapter", "dpo_adapter", "merged_model", "gptq_model", "awq_model", "deployment",
                             *(EVALS - {"eval_base"})}
    meta = artifacts_of(result)
    assert meta["sft_adapter"]["fingerprint"] != artifacts_of(first)["sft_adapter"]["fingerprint"]
    assert meta["reward_model"]["fingerprint"] == artifacts_of(first)["reward_model"]["fingerprint"]


def test_new_incoming_data_starts_a_run_and_reaches_a_new_model(first_run, project):
    home, recipe = project
    root, first = first_run
    sensor = incoming_data_sensor(full_pipeline, load_recipe(recipe)[0])
    tuneline = Tuneline(recipe_name=recipe, artifact_root=str(root))
    _, cursor = evaluate(sensor, tuneline, None)  # the state the first run was made from
    new_rows = [{"messages": [{"role": "user", "content": f"Write the words in capitals. {w} zebra quokka"},
                              {"role": "assistant", "content": f"{w.upper()} ZEBRA QUOKKA"}]}
                for w in ("heron", "ibis", "stork", "crane", "egret", "bittern", "spoonbill", "flamingo")]
    (home / "data" / "incoming" / "batch-001.jsonl").write_text("\n".join(json.dumps(r) for r in new_rows) + "\n")
    request, _ = evaluate(sensor, tuneline, cursor)
    assert isinstance(request, dg.RunRequest) and request.tags["tuneline/changed_sources"] == "incoming"

    result = materialize(root, recipe)
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    old, new = artifacts_of(first)["merged_model"], artifacts_of(result)["merged_model"]
    assert new["fingerprint"] != old["fingerprint"]
    assert Path(old["path"]).is_dir()  # the previous model stays retrievable
    catalog = Catalog(root / "catalog.duckdb")
    record = lineage(catalog, new["fingerprint"])
    assert record["data"]["incoming"]["raw_rows"] == 8
    rows_file = root / "rows.csv"
    write_training_rows(catalog, new["path"], rows_file)
    assert sum(line.startswith("incoming,incoming:batch-001.jsonl:") for line in rows_file.read_text().splitlines()) \
        == record["data"]["incoming"].get("train_rows", 0) + record["data"]["incoming"].get("eval_rows", 0) > 0
    assert "incoming" not in lineage(catalog, old["fingerprint"])["data"]


def evaluate(sensor, tuneline, cursor):
    context = dg.build_sensor_context(cursor=cursor, resources={"tuneline": tuneline})
    return sensor(context), context.cursor

