import pytest

from engine.errors import RecipeError
from engine.recipe import load_recipe


def test_tiny_recipe_loads_with_llamafactory_keys():
    recipe, path = load_recipe("tiny")
    assert path.name == "tiny.yaml"
    assert recipe.model.model_name_or_path == "tiny"
    assert recipe.sft.lora_target == "all" and recipe.dpo.pref_loss == "sigmoid"


def test_override_by_dotted_key():
    recipe, _ = load_recipe("tiny", {"sft.learning_rate": 1e-4, "data.cutoff_len": 64})
    assert recipe.sft.learning_rate == 1e-4 and recipe.data.cutoff_len == 64


def test_mistyped_key_is_named_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lora_rnak: 8\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(bad))
    assert "sft.lora_rnak: unknown key" in str(err.value)
    assert "did you mean 'sft.lora_rank'" in str(err.value)


def test_unknown_section_and_wrong_type_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {}\nsft:\n  learning_rate: fast\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(bad))
    assert "trainer: unknown key" in str(err.value)
    assert "sft.learning_rate" in str(err.value) and "'fast'" in str(err.value)


def test_missing_recipe_file_and_unknown_name():
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("/nowhere/recipe.yaml")
    with pytest.raises(RecipeError, match="no recipe named 'tinny'"):
        load_recipe("tinny")


def test_a_shingle_size_the_dedup_cannot_read_stops_at_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clean:\n  steps:\n    - {step: near_dedup, shingle_size: 12}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(bad))
    assert "clean.steps.0.near_dedup.shingle_size" in str(err.value) and "less than or equal to 8" in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    ({"sft.finetuning_type": "adalora"}, "sft.finetuning_type"),
    ({"sft.freeze_trainable_layers": 0}, "freeze_trainable_layers: 0 trains nothing"),
    ({"dpo.loraplus_lr_ratio": 16, "dpo.finetuning_type": "full"}, "loraplus_lr_ratio needs finetuning_type lora"),
    ({"dpo.pref_loss": "simpo"}, "dpo.pref_loss"),
    ({"sft.report_to": "wandb"}, "sft.report_to"),
    ({"serve.model": "gguf"}, "serve.model"),
    ({"serve.served_model_name": "my/model"}, "serve.served_model_name"),
])
def test_training_and_serving_options_are_checked_at_load(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("tiny", overrides)
