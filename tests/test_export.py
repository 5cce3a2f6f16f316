"""`tuneline export`: a built model as a standalone Hugging Face folder that reloads and answers as the artifact
does; written atomically; a push to the Hub refused before anything is written when it cannot happen."""

import json

import dagster as dg
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.models.load import load_with_adapters, model_dir, smoke_generate, load_tokenizer
from pipelines.cli import main
from pipelines.definitions import ASSETS, resources

OVERRIDES = {"stages": ["sft"], "sft.finetuning_type": "lora", "sft.max_steps": 4}  # a LoRA adapter, in seconds
CLI_OVERRIDES = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={json.dumps(v)}")]
PROMPTS = ["Add the two numbers.\n120 + 345", "Give the opposite of the last word.\nbig small dark"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sft_adapter (a LoRA on the tiny base) and merged_model, built in a temporary artifact root."""
    root = tmp_path_factory.mktemp("export")
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources("tiny", str(root), OVERRIDES), instance=instance,
                                selection="*merged_model")
    assert result.success
    return root, {a: next((root / "artifacts" / a).glob("*/manifest.json")).parent
                  for a in ("pt_model", "sft_adapter", "merged_model")}


def export(*argv) -> int:
    return main(["export", *argv])


def test_an_adapter_exports_merged_and_reloads_to_the_same_greedy_answers(built, tmp_path, capsys):
    root, paths = built
    out = tmp_path / "my-model"
    assert export("sft_adapter", str(out), "--artifact-root", str(root), *CLI_OVERRIDES) == 0
    assert f"exported sft_adapter {paths['sft_adapter'].name} to {out}" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "generation_config.json", "chat_template.jinja",
                 "tokenizer.json", "README.md", "lineage.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists()  # standalone: the adapter is merged into the base
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["artifacts"]["sft_adapter"]["fingerprint"] == paths["sft_adapter"].name
    assert lineage["export"]["asset"] == "sft_adapter"
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = load_with_adapters(model_dir(paths["pt_model"]), paths["sft_adapter"] / "adapter").eval()
    reference = load_tokenizer(model_dir(paths["pt_model"]))
    for prompt in PROMPTS:
        answer = smoke_generate(exported, tokenizer, prompt, max_new_tokens=12)
        assert answer == smoke_generate(trained, reference, prompt, max_new_tokens=12)
    assert main(["verify", str(out)]) == 0  # lineage.json's digests hold in the copy


def test_a_merged_model_is_copied_whole(built, tmp_path):
    root, paths = built
    out = tmp_path / "merged"
    assert export(paths["merged_model"].name, str(out), "--artifact-root", str(root)) == 0
    source = {p.relative_to(paths["merged_model"]): p.read_bytes() for p in paths["merged_model"].rglob("*")
              if p.is_file() and p.name != "manifest.json"}
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == source


def test_a_folder_that_is_not_empty_is_refused_unless_forced(built, tmp_path, capsys):
    root, paths = built
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export(paths["merged_model"].name, str(out), "--artifact-root", str(root)) == 2
    err = capsys.readouterr().err
    assert f"{out} is not empty" in err and "--force" in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert export(paths["merged_model"].name, str(out), "--artifact-root", str(root), "--force") == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left beside it


def test_a_damaged_artifact_is_not_exported(built, tmp_path, capsys):
    root, paths = built
    copy = tmp_path / "home"
    import shutil
    shutil.copytree(root, copy, symlinks=True)
    merged = copy / "artifacts" / "merged_model" / paths["merged_model"].name
    with (merged / "config.json").open("a") as handle:
        handle.write(" ")
    assert export(merged.name, str(tmp_path / "out"), "--artifact-root", str(copy)) == 2
    err = capsys.readouterr().err
    assert "is damaged: config.json" in err and not (tmp_path / "out").exists()


def test_a_push_offline_or_without_a_token_stops_before_writing(built, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    root, paths = built
    out = tmp_path / "pushed"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert export("merged_model", str(out), "--push-to-hub", "me/tiny", "--artifact-root", str(root),
                  *CLI_OVERRIDES) == 2
    err = capsys.readouterr().err
    assert "--push-to-hub me/tiny: HF_HUB_OFFLINE is set" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    assert export("merged_model", str(out), "--push-to-hub", "me/tiny", "--artifact-root", str(root),
                  *CLI_OVERRIDES) == 2
    err = capsys.readouterr().err
    assert "--push-to-hub me/tiny: no Hugging Face token" in err and len(err.splitlines()) == 1
    from engine.serve.server import free_port
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # a Hub nobody answers for
    assert export("merged_model", str(out), "--push-to-hub", "me/tiny", "--artifact-root", str(root),
                  *CLI_OVERRIDES) == 2
    err = capsys.readouterr().err
    assert "--push-to-hub me/tiny: the Hub did not accept the token" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_tuneline_chat_web_serves_an_adapter_merged_as_export_writes_it(built, tmp_path):
    import os
    import sys
    from engine.serve.chat import load_chat_model, reply
    from engine.serve.server import chat_completion, free_port
    from tests.processes import started
    root, paths = built
    out = tmp_path / "exported"
    assert export("sft_adapter", str(out), "--artifact-root", str(root), *CLI_OVERRIDES) == 0
    port, messages = free_port(), [{"role": "user", "content": PROMPTS[0]}]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("TUNELINE_API_KEY", None)
    command = [sys.executable, "-m", "pipelines.cli", "chat", "--web", "sft_adapter", "--port", str(port),
               "--artifact-root", str(root), *CLI_OVERRIDES]
    with started(command, tmp_path / "logs", env=env) as child:
        child.wait_for_output(f"chat in a browser: http://127.0.0.1:{port}/chat", 600, "the page's address")
        served = chat_completion(f"http://127.0.0.1:{port}/v1", "tiny-sft_adapter", messages, 12)
    model, tokenizer = load_chat_model(out)
    expected = reply(model, tokenizer, messages, max_new_tokens=12)
    assert served["answer"].strip().rstrip("\ufffd").strip() == expected.strip().rstrip("\ufffd").strip()
