import pytest

from engine.errors import RecipeError
from engine.models.load import check_local_model, load_causal_lm, load_tokenizer, smoke_generate


def test_tiny_preset_is_a_qwen2_model_that_reloads_and_generates(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    assert model.config.model_type == "qwen2" and 128 <= model.config.hidden_size <= 256
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert isinstance(smoke_generate(model, tokenizer), str)


def test_tiny_preset_can_be_used_as_a_local_checkpoint(tiny_model_dir):
    assert check_local_model(str(tiny_model_dir)) == tiny_model_dir


def test_bad_model_paths_are_named(tmp_path):
    with pytest.raises(RecipeError, match="is not a directory"):
        check_local_model(str(tmp_path / "nope"))
    with pytest.raises(RecipeError, match="has no config.json"):
        check_local_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_text("")
    with pytest.raises(RecipeError, match="no \\*.safetensors"):
        check_local_model(str(tmp_path))
