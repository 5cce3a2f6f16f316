"""The machine-level recipe check: a recipe loaded (schema and cross-section rules, engine/recipe) and everything it
names checked on this machine, before any work starts: its data sources and pt corpus, the model and adapters, the
precision, the scorer, the training options this install can run, the evaluation and generation backends.

A run validates its recipe once, here, where it starts (`tuneline` or a Dagster run): the result is remembered by
recipe file, text and overrides, so every stage of the run reads the same Recipe object without validating again.
The retrain schedule's cron string is Dagster's to judge and is checked beside this on the Dagster side
(assets/resource.py): engine/ never imports dagster.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from engine.data.registry import recipe_sources
from engine.evaluate.compare import check_generation_backend, check_lm_eval
from engine.evaluate.scorers import resolve_scorer
from engine.models.device import check_precision, here, stage_device
from engine.models.load import check_adapter, check_local_model, is_tiny
from engine.errors import RecipeError
from engine.recipe import Recipe, load_recipe, resolve_recipe_path
from engine.train.adapters import check_lora_targets, check_quantized_training
from engine.train.arguments import check_speed_levers
from engine.train.sharding import check_sharding
from engine.train.pt import pt_sources

TRAINING_SECTIONS = ("pt", "sft", "reward", "dpo")


def checked_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe (a name under pipelines/recipes or a YAML path) with `overrides` by dotted key, validated and
    checked on this machine; RecipeError or DataError in one line naming the key, file or row. An unchanged recipe
    file with the same overrides is not validated again in this process."""
    path = resolve_recipe_path(name_or_path)
    return _checked(str(path), json.dumps(overrides or {}, sort_keys=True), path.read_bytes())


@lru_cache(maxsize=8)
def _checked(path: str, overrides_json: str, text: bytes) -> Recipe:  # keyed on the text: an edited recipe reloads
    recipe, _ = load_recipe(path, json.loads(overrides_json))
    check_on_this_machine(recipe)
    return recipe


def check_on_this_machine(recipe: Recipe) -> None:
    """Every path, model and option the recipe names, against this machine and install, and the GPU-only options
    against the device each stage runs on (a declared accelerator for a stage that runs as a pod). The precision
    keys are checked on every device a model-loading stage runs on: here (deployment always runs here), and the
    declared accelerator where pods run."""
    training = stage_device(recipe.launcher, "training")
    for on in dict.fromkeys((training, stage_device(recipe.launcher, "export"),
                             stage_device(recipe.launcher, "evaluation"), here())):
        try:
            check_precision(recipe.model, on)
        except RecipeError as refused:
            if on.declared or recipe.launcher.type != "kubernetes":
                raise
            raise RecipeError(f"{refused} (checked on this machine: deployment, and the stages "
                              "launcher.kubernetes.also_in_pods leaves out, run here)") from None
    recipe_sources(recipe.data)
    pt_sources(recipe)
    resolve_scorer(recipe.evaluation.scorer)
    for section in TRAINING_SECTIONS:
        check_quantized_training(getattr(recipe, section), section, training)
        check_speed_levers(getattr(recipe, section), section, training)
    check_lora_targets(recipe)
    check_sharding(recipe)
    check_lm_eval(recipe.evaluation)
    check_generation_backend(recipe.evaluation, stage_device(recipe.launcher, "evaluation"))
    if not is_tiny(recipe.model):
        check_local_model(recipe.model.model_name_or_path)
    for adapter in recipe.model.adapters():
        check_adapter(adapter)
