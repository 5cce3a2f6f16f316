"""The resource every asset uses: the run's recipe, its artifact root, and its plan (computed once per run)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import dagster as dg
from pydantic import Field

from engine.data.registry import recipe_sources
from engine.models.device import check_precision
from engine.errors import RecipeError
from engine.evaluate.compare import check_generation_backend, check_lm_eval
from engine.store.home import Home
from engine.models.load import check_adapter, check_local_model, is_tiny
from engine.plan import Planned, make_plan
from engine.recipe import Recipe, load_recipe, resolve_recipe_path
from engine.evaluate.scorers import resolve_scorer
from engine.train.adapters import check_lora_targets, check_quantized_training
from engine.train.arguments import check_speed_levers
from engine.train.pt import pt_sources


def validated_recipe(name_or_path: str, overrides_json: str) -> Recipe:
    """Load the recipe and check every path it names, before any work starts."""
    path = resolve_recipe_path(name_or_path)
    return _validated(str(path), overrides_json, path.read_bytes())


def check_schedule(recipe: Recipe) -> None:
    """The retrain schedule is Dagster's, so Dagster's own cron parser decides (engine/ never imports dagster)."""
    from dagster._utils.schedules import is_valid_cron_string
    if not is_valid_cron_string(recipe.schedule.cron):
        raise RecipeError(f"schedule.cron {recipe.schedule.cron!r}: expected a 5-field cron string Dagster accepts, "
                          'such as "0 3 * * 1" (Mondays 03:00)')


@lru_cache(maxsize=8)
def _validated(path: str, overrides_json: str, text: bytes) -> Recipe:  # keyed on the text: an edited recipe reloads
    recipe, _ = load_recipe(path, json.loads(overrides_json))
    check_schedule(recipe)
    check_precision(recipe.model)
    recipe_sources(recipe.data)
    pt_sources(recipe)
    resolve_scorer(recipe.evaluation.scorer)
    for stage in ("pt", "sft", "reward", "dpo"):
        check_quantized_training(getattr(recipe, stage), stage)
        check_speed_levers(getattr(recipe, stage), stage)
    check_lora_targets(recipe)
    check_lm_eval(recipe.evaluation)
    check_generation_backend(recipe.evaluation)
    if not is_tiny(recipe.model):
        check_local_model(recipe.model.model_name_or_path)
    for adapter in recipe.model.adapters():
        check_adapter(adapter)
    return recipe


# Run config (the Launchpad) replaces a resource's bound values, so defaults come from the code location's
# environment: TUNELINE_RECIPE and TUNELINE_HOME, as `make ui` sets them.
def default_recipe() -> str:
    return os.environ.get("TUNELINE_RECIPE", "tiny")


def default_root() -> str:
    return os.environ.get("TUNELINE_HOME", os.path.abspath(".tuneline"))


# one plan per run: every stage of a run reads the same fingerprints, even if a data file changes mid-run
PLANS: OrderedDict[tuple, dict[str, Planned]] = OrderedDict()


class Tuneline(dg.ConfigurableResource):
    """The run's recipe (name or YAML path), recipe overrides by dotted key, and the artifact root.

    In the Launchpad: resources: {tuneline: {config: {overrides: {sft.learning_rate: 1.0e-4}}}}
    """
    recipe_name: str = Field(default_factory=default_recipe)
    overrides: dict[str, Any] = {}
    artifact_root: str = Field(default_factory=default_root)

    def recipe(self) -> Recipe:
        return validated_recipe(self.recipe_name, json.dumps(self.overrides, sort_keys=True))

    def home(self) -> Home:
        return Home(self.artifact_root)

    def plan(self, run_id: str | None = None) -> dict[str, Planned]:
        """The fingerprints this run's recipe implies (computed once per run id; afresh without one)."""
        from pipelines.definitions import STAGES
        key = (run_id, self.recipe_name, json.dumps(self.overrides, sort_keys=True), self.artifact_root)
        if run_id is None or key not in PLANS:
            PLANS[key] = make_plan(STAGES, self.recipe(), self.home().hasher())
            while len(PLANS) > 16:
                PLANS.popitem(last=False)
        return PLANS[key]
