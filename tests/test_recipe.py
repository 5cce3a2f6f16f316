import pytest

from engine.errors import RecipeError
from engine.recipe import Recipe, load_recipe


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
    ({"sft.report_to": "comet_ml"}, "sft.report_to"),
    ({"serve.model": "gguf"}, "serve.model"),
    ({"serve.served_model_name": "my/model"}, "serve.served_model_name"),
    ({"stages": ["sft", "rlhf"]}, r"stages\.1: Input should be 'pt', 'sft', 'rm', 'dpo', 'kto', 'ppo' or 'grpo'"),
    ({"stages": ["pt", "sft"]}, "names pt, but pt.dataset is empty"),
    ({"stages": ["sft", "dpo", "kto"]}, "name each stage once"),
    ({"stages": ["sft", "kto"], "dpo.pref_loss": "ipo"}, "tiny.yaml: stages names kto but dpo.pref_loss is ipo: set"),
])
def test_training_and_serving_options_are_checked_at_load(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("tiny", overrides)


def write(tmp_path, text: str | bytes):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def one_line_error(name_or_path: str, overrides: dict | None = None) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(name_or_path, overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("text, key, expected", [
    ("sft:\n  lr_scheduler_type: cosyne\n", "sft.lr_scheduler_type", "expected one of transformers' schedulers"),
    ("sft:\n  lora_target: q_proj,,v_proj\n", "sft.lora_target", 'expected "all" or comma-separated module names'),
    ("sft:\n  lora_target: all,q_proj\n", "sft.lora_target", 'expected "all" or comma-separated module names'),
    ("sft:\n  lora_target: q-proj\n", "sft.lora_target", 'expected "all" or comma-separated module names'),
    ("schedule:\n  timezone: Mars/Olympus\n", "schedule.timezone", "expected an IANA time zone name"),
    ("sft:\n  learning_rate: .inf\n", "sft.learning_rate", "finite number"),
    ("clean:\n  max_quarantine_ratio: .nan\n", "clean.max_quarantine_ratio", "finite number"),
    ("sft:\n  lora_rank: true\n", "sft.lora_rank", "valid integer"),
    ("sft:\n  lora_rank: 8.0\n", "sft.lora_rank", "valid integer"),
    ("dpo:\n  pref_beta: true\n", "dpo.pref_beta", "expected a number, not true/false"),
])
def test_keys_with_a_closed_set_of_values_are_checked_at_load(tmp_path, text, key, expected):
    message = one_line_error(write(tmp_path, text))
    assert f": {key}: " in message and expected in message


def test_valid_values_of_the_checked_keys_load(tmp_path):
    recipe, _ = load_recipe(write(tmp_path, (
        "sft: {lr_scheduler_type: cosine_with_min_lr, lora_target: 'q_proj, v_proj', learning_rate: 1,\n"
        "      lora_rank: 8, num_train_epochs: 2}\n"
        "schedule: {cron: '30 2 * * 1-5', timezone: Europe/Berlin}\n")))
    assert recipe.sft.lr_scheduler_type == "cosine_with_min_lr" and recipe.sft.lora_target == "q_proj, v_proj"
    assert recipe.sft.learning_rate == 1.0 and isinstance(recipe.sft.learning_rate, float)
    assert recipe.sft.lora_rank == 8 and recipe.schedule.cron == "30 2 * * 1-5"
    assert recipe.schedule.timezone == "Europe/Berlin"


def test_the_overrides_the_cli_parses_still_validate():
    import yaml  # `--set` values are YAML scalars; PyYAML reads 1e-4 (no dot) as a string, which a float takes
    recipe, _ = load_recipe("tiny", {"sft.lora_rank": yaml.safe_load("8"),
                                     "sft.learning_rate": yaml.safe_load("1e-4"),
                                     "sft.packing": yaml.safe_load("true")})
    assert recipe.sft.lora_rank == 8 and recipe.sft.learning_rate == 1e-4 and recipe.sft.packing is True


@pytest.mark.parametrize("text, first, second", [
    ("sft:\n  lora_rank: 8\n  learning_rate: 1.0e-3\n  lora_rank: 16\n", 2, 4),
    ("name: a\nsft: {lora_rank: 8}\nname: b\n", 1, 3),
])
def test_a_key_set_twice_is_named_with_both_lines(tmp_path, text, first, second):
    key = "lora_rank" if "lora_rank: 16" in text else "name"
    message = one_line_error(write(tmp_path, text))
    assert f"key {key!r} appears twice, at line {first} and line {second}" in message


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    text = "name: &n x\nsft: &base {lora_rank: 8, lora_alpha: 16}\nreward:\n  <<: *base\n  lora_rank: 4\n"
    recipe, _ = load_recipe(write(tmp_path, text))
    assert recipe.reward.lora_rank == 4 and recipe.reward.lora_alpha == 16


def test_a_file_that_is_not_utf8_is_named_with_the_byte(tmp_path):
    path = write(tmp_path, "name: tiny\n# caf\xe9\n".encode("latin-1"))
    message = one_line_error(path)
    assert f"recipe {path} is not UTF-8 text: byte 0xe9 at offset 16 (line 2)" in message


def test_a_syntax_error_is_one_line_with_its_position(tmp_path):
    message = one_line_error(write(tmp_path, "sft: [1\n"))
    assert "is not valid YAML: line 2, column 1" in message


@pytest.mark.parametrize("overrides, expected", [
    ({"sft.lora_rank": "abc"}, "sft.lora_rank: Input should be a valid integer (got 'abc')"),
    ({"sft": 3}, "sft: Input should be a valid dictionary"),
    ({"nosuch.key": 1}, "nosuch: unknown key"),
    ({"sft.lora_rnak": 1}, "did you mean 'sft.lora_rank'?"),
    ({"dpo.pref_beta.x": 1}, "override 'dpo.pref_beta.x': dpo.pref_beta is 0.1, a value, not a section"),
    ({"sft.warmup_ratio.x": 1}, "override 'sft.warmup_ratio.x': sft.warmup_ratio is a value, not a section"),
    ({"name.x": 1}, "override 'name.x': name is 'tiny', a value, not a section"),
    ({"clean.steps.99.threshold": 0.5}, "override 'clean.steps.99.threshold': clean.steps is a list of 7 items"),
    ({"sft..lora_rank": 1}, "expected a dotted recipe key"),
])
def test_a_bad_override_is_one_line(overrides, expected):
    assert expected in one_line_error("tiny", overrides)


def test_an_override_reaches_into_a_list_of_steps():
    recipe, _ = load_recipe("tiny", {"clean.steps.6.threshold": 0.9})
    assert recipe.clean.steps[6].step == "near_dedup" and recipe.clean.steps[6].threshold == 0.9


def test_an_unknown_key_inside_a_clean_step_is_named(tmp_path):
    message = one_line_error(write(tmp_path, "clean:\n  steps:\n    - {step: near_dedup, treshold: 0.5}\n"))
    assert ("clean.steps.0.near_dedup.treshold: unknown key; did you mean 'clean.steps.0.near_dedup.threshold'"
            in message)


@pytest.mark.parametrize("cron", ["61 3 * * *", "0 3 * * 1 2026", "not a cron"])
def test_a_cron_dagster_would_refuse_stops_the_recipe_before_any_work(tmp_path, cron):
    from assets.resource import validated_recipe
    with pytest.raises(RecipeError) as err:
        validated_recipe(write(tmp_path, f"schedule:\n  cron: '{cron}'\n"), "{}")
    assert f"schedule.cron '{cron}': expected a 5-field cron string Dagster accepts" in str(err.value)


def test_stages_default_to_all_and_kto_is_the_dpo_stage_with_the_kto_loss():
    assert load_recipe("tiny")[0].stages == ["sft", "rm", "dpo"]
    recipe = Recipe.model_validate({"stages": ["sft", "kto"]})
    assert recipe.stages == ["sft", "dpo"] and recipe.dpo.pref_loss == "kto" and not recipe.runs("rm")


@pytest.mark.parametrize("stages", [["pt"], ["sft"], ["rm"], ["dpo"], ["kto"], ["pt", "sft", "rm", "dpo"], []])
def test_stages_may_be_any_llamafactory_stage_list(stages):
    recipe = Recipe.model_validate({"stages": stages, "pt": {"dataset": ["pt_corpus"]} if "pt" in stages else {}})
    named = {"kto": "dpo"}
    assert [named.get(s, s) for s in stages] == recipe.stages
    assert recipe.runs("sft") == ("sft" in stages) and recipe.runs("pt") == ("pt" in stages)


def test_no_stage_code_version_covers_a_recipe_module():
    """The schema, its descriptions, the loader and the key reference may change without rebuilding anything: a
    stage reads its recipe keys through its fingerprint's config, never through its code version."""
    from engine.store.codeversion import module_closure
    from engine.graph import STAGES
    covered = {s.name: [m for m in module_closure(s.entry.__module__) if m.startswith("engine.recipe")]
               for s in STAGES}
    assert covered and not any(covered.values()), covered
