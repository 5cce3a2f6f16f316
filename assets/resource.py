"""The resource every asset uses: the run's recipe, its artifact root, and its plan (computed once per run)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

import dagster as dg
from pydantic import Field

from engine.errors import RecipeError, TunelineError
from engine.graph import STAGES
from engine.plan import Planned, make_plan
from engine.preflight import checked_recipe
from engine.recipe import Recipe
from engine.store.home import Home, check_home


def validated_recipe(name_or_path: str, overrides_json: str = "{}") -> Recipe:
    """The recipe checked as a Dagster run needs it: engine/preflight.py's machine-level check (done once per recipe
    text and overrides in this process), and the retrain schedule's cron string. Overrides as JSON text (what the
    CLI passes); engine.preflight.checked_recipe takes them as a dict and needs no Dagster."""
    recipe = checked_recipe(name_or_path, json.loads(overrides_json))
    check_schedule(recipe)
    return recipe


def check_schedule(recipe: Recipe) -> None:
    """The retrain schedule is Dagster's, so Dagster's own cron parser decides (engine/ never imports dagster)."""
    from dagster._utils.schedules import is_valid_cron_string
    if not is_valid_cron_string(recipe.schedule.cron):
        raise RecipeError(f"schedule.cron {recipe.schedule.cron!r}: expected a 5-field cron string Dagster accepts, "
                          'such as "0 3 * * 1" (Mondays 03:00)')


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

    In the Launchpad: a `<recipe>_pipeline` job's form sets these (pipelines/launchpad.py); full_pipeline takes
    resources: {tuneline: {config: {overrides: {sft.learning_rate: 1.0e-4}}}}
    """
    recipe_name: str = Field(default_factory=default_recipe)
    overrides: dict[str, Any] = {}
    artifact_root: str = Field(default_factory=default_root)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run's recipe, overrides, command and version as its tags, where whoever started it (the Launchpad) did
        not set them (once per run: the stages share one process); a recipe its rules refuse fails the run here."""
        run = context.run
        if run is None or context.instance is None:  # a sensor's evaluation, not a run
            return
        from assets.run_tags import COMMAND, FAILURE, run_tags
        try:
            recipe, problem = self.recipe(), None
        except TunelineError as exc:  # a recipe or data error
            recipe, problem = None, exc
        tags = run_tags(self.recipe_name, recipe, self.overrides, "launchpad")
        missing = {k: v for k, v in tags.items() if k not in run.tags or (k == COMMAND and not run.tags[k])}
        if problem is not None:
            missing[FAILURE] = f"tuneline resource: {str(problem).splitlines()[0]}"
        if missing:
            context.instance.add_run_tags(run.run_id, missing)
        if problem is not None:
            raise problem

    def recipe(self) -> Recipe:
        return validated_recipe(self.recipe_name, json.dumps(self.overrides, sort_keys=True))

    def home(self) -> Home:
        check_home(self.artifact_root, "artifact_root (TUNELINE_HOME)")  # a dozen stat calls: every use is checked
        return Home(self.artifact_root)

    def plan(self, run_id: str | None = None) -> dict[str, Planned]:
        """The fingerprints this run's recipe implies (computed once per run id; afresh without one)."""
        key = (run_id, self.recipe_name, json.dumps(self.overrides, sort_keys=True), self.artifact_root)
        if run_id is None or key not in PLANS:
            PLANS[key] = make_plan(STAGES, self.recipe(), self.home().hasher())
            while len(PLANS) > 16:
                PLANS.popitem(last=False)
        return PLANS[key]
