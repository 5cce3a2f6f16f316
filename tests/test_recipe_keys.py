"""Keys that can evolve: every recipe key described (LLaMA-Factory's default named where ours differs), and a
renamed key that keeps working for a release with a FutureWarning naming the old key, the new one and where."""

import os
import subprocess
import sys
import types
import typing
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import pytest
from packaging.version import Version
from pydantic import BaseModel

import engine.recipe.renamed
from engine.errors import RecipeError
from engine.recipe import RENAMED, Recipe, Renamed, get_dotted, is_fingerprinted, is_threshold, load_recipe

PROJECT = Path(__file__).resolve().parents[1]


def sections_under(model: type[BaseModel], seen: dict | None = None) -> dict[type[BaseModel], None]:
    """Every section class reachable from `model` through its fields' annotations (Annotated, unions, lists, dicts)."""
    seen = {} if seen is None else seen
    seen[model] = None
    pending = [field.annotation for field in model.model_fields.values()]
    while pending:
        annotation = pending.pop()
        if typing.get_origin(annotation) is Annotated:
            pending.append(typing.get_args(annotation)[0])
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict):
            pending += typing.get_args(annotation)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
            sections_under(annotation, seen)
    return seen


def every_field():
    return [(section, name, field) for section in sections_under(Recipe) for name, field in
            section.model_fields.items()]


def test_the_walk_reaches_nested_sections_and_every_clean_step():
    names = {s.__name__ for s in sections_under(Recipe)}
    # the recipe, its 16 sections, the tiny preset, the kubernetes pods and their accelerator, the 8 clean steps and
    # grpo's reward terms
    assert {"TinyModel", "KubernetesSection", "AcceleratorSection", "NormalizeStep", "NearDedupStep", "PiiStep",
            "DpoSection", "GrpoSection", "GrpoReward", "PpoSection"} <= names
    assert len(names) == 29 and len(every_field()) > 150


def test_every_field_in_every_section_has_a_description():
    missing = [f"{section.__name__}.{name}" for section, name, field in every_field()
               if not (field.description or "").strip()]
    assert not missing, f"fields without Field(description=...): {missing}"


def test_thresholds_and_operational_keys_say_so_first():
    """The key reference tells a reader which keys rebuild nothing by these words."""
    for section, name, field in every_field():
        if is_threshold(section, name):
            assert field.description.startswith(("check", "gate")), f"{section.__name__}.{name}"
        elif not is_fingerprinted(section, name):
            assert field.description.startswith("operational:"), f"{section.__name__}.{name}"


# keys whose default is not LLaMA-Factory's (hparams/*.py at its HEAD; its training keys take transformers'
# TrainingArguments defaults), and LLaMA-Factory's value the description must give
DIFFERS_FROM_LLAMAFACTORY = {
    "data.cutoff_len": "2048", "data.val_size": "0.0", "sft.lora_rank": "8", "sft.lora_alpha": "lora_rank x 2",
    "sft.learning_rate": "5e-5", "pt.learning_rate": "5e-5", "dpo.learning_rate": "5e-5",
    "sft.num_train_epochs": "3.0", "sft.per_device_train_batch_size": "8", "sft.lr_scheduler_type": "linear",
    "sft.warmup_ratio": "0", "sft.logging_steps": "500",
    "sft.gradient_checkpointing": "disable_gradient_checkpointing",
    "evaluation.infer_backend": "huggingface", "serve.infer_backend": "huggingface", "evaluation.max_new_tokens": "1024",
    "quantize.calibration_samples": "128", "quantize.export_quantization_bit": "unset", "serve.host": "0.0.0.0",
    "serve.max_model_len": "4096", "model.bf16": "false",
}


@pytest.mark.parametrize("key, theirs", DIFFERS_FROM_LLAMAFACTORY.items())
def test_a_default_that_differs_from_llamafactory_says_theirs(key, theirs):
    section, name = key.rsplit(".", 1)
    description = type(get_dotted(Recipe(), section)).model_fields[name].description
    assert "LLaMA-Factory" in description and theirs in description, description


def test_the_rename_table_is_sound():
    """Every entry reads as a key that exists, its old name is no key any more, and it leaves in a later release."""
    current = Version(version("tuneline"))
    for entry in RENAMED:
        get_dotted(Recipe(), entry.new)
        with pytest.raises(KeyError):
            get_dotted(Recipe(), entry.old)
        assert Version(entry.removed_in) > current, f"{entry.old}: its release {entry.removed_in} has come: remove it"


@pytest.fixture
def renamed(monkeypatch):
    """A test-only table: sft.rank renamed sft.lora_rank, and a whole section reward_model renamed reward."""
    table = (Renamed("sft.rank", "sft.lora_rank", "0.2.0"), Renamed("reward_model", "reward", "0.2.0"))
    monkeypatch.setattr(engine.recipe.renamed, "RENAMED", table)
    return table


def test_an_old_key_in_the_yaml_lands_on_the_new_key_with_a_warning(tmp_path, renamed):
    path = tmp_path / "old.yaml"
    path.write_text("name: old\nsft:\n  rank: 4\nreward_model:\n  lora_rank: 2\n")
    with pytest.warns(FutureWarning) as caught:
        recipe, _ = load_recipe(str(path))
    assert recipe.sft.lora_rank == 4 and recipe.reward.lora_rank == 2
    messages = sorted((str(w.message), w.filename, w.lineno) for w in caught)
    assert messages == [
        (f"reward_model is renamed reward (reward_model stops working in release 0.2.0): rename it in {path}",
         str(path), 4),
        (f"sft.rank is renamed sft.lora_rank (sft.rank stops working in release 0.2.0): rename it in {path}",
         str(path), 3)]


def test_an_old_key_in_an_override_lands_on_the_new_key_with_a_warning(renamed):
    with pytest.warns(FutureWarning) as caught:
        recipe, _ = load_recipe("tiny", {"sft.rank": 4, "reward_model.learning_rate": 0.5})
    assert recipe.sft.lora_rank == 4 and recipe.reward.learning_rate == 0.5
    assert sorted(str(w.message) for w in caught) == [
        "reward_model is renamed reward (reward_model stops working in release 0.2.0): use --set "
        "reward.learning_rate",
        "sft.rank is renamed sft.lora_rank (sft.rank stops working in release 0.2.0): use --set sft.lora_rank"]


def test_old_and_new_key_both_given_is_an_error_naming_both(tmp_path, renamed):
    path = tmp_path / "both.yaml"
    path.write_text("sft:\n  rank: 4\n  lora_rank: 8\n")
    with pytest.raises(RecipeError, match=r"sft\.rank and sft\.lora_rank are both set; .* keep sft\.lora_rank only"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match=r"--set sft\.rank and --set sft\.lora_rank are both given"):
        load_recipe("tiny", {"sft.rank": 4, "sft.lora_rank": 8})


def test_an_unknown_key_still_gets_its_did_you_mean(tmp_path, renamed):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  lora_rnak: 8\n")
    with pytest.raises(RecipeError, match=r"sft\.lora_rnak: unknown key; did you mean 'sft\.lora_rank'\?"):
        load_recipe(str(path))


def test_the_warning_is_shown_once_however_often_the_recipe_loads(tmp_path, renamed):
    path = tmp_path / "old.yaml"
    path.write_text("sft:\n  rank: 4\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own action for FutureWarning, outside pytest
        for _ in range(3):
            load_recipe(str(path))
    assert len([w for w in caught if w.category is FutureWarning]) == 1


def test_the_cli_user_sees_the_warning_once(tmp_path):
    """A real `tuneline plan` process (no pytest warning filters): one warning per old key on stderr, naming the
    recipe line to change; the recipe still plans. The table is patched in that process before the CLI runs."""
    path = tmp_path / "old.yaml"
    path.write_text("name: old\nsft:\n  rank: 4\n")
    script = ("import sys, engine.recipe.renamed as r\n"
              "r.RENAMED = (r.Renamed('sft.rank', 'sft.lora_rank', '0.2.0'),)\n"
              "from pipelines.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, "plan", "--recipe", str(path), "--artifact-root",
                           str(tmp_path / "root"), "--set", "sft.rank=8"], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "FutureWarning" in line]
    assert warned == [f"{path}:3: FutureWarning: sft.rank is renamed sft.lora_rank (sft.rank stops working in "
                      f"release 0.2.0): rename it in {path}",
                      "--set:0: FutureWarning: sft.rank is renamed sft.lora_rank (sft.rank stops working in release "
                      "0.2.0): use --set sft.lora_rank"]
    assert "  rank: 4" in done.stderr  # Python shows the recipe line below its warning
    assert "sft_adapter" in done.stdout
