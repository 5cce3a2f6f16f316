"""Retraining on a schedule (cron from the recipe) and when registered data changes (by content hash)."""

from __future__ import annotations

import json

import dagster as dg

from assets.resource import Tuneline
from assets.run_tags import run_tags
from engine.data.watch import changed_sources, snapshot, state_key, unreadable_files, watched_sources
from engine.errors import TunelineError
from engine.recipe import Recipe


def retrain_schedule(job: dg.UnresolvedAssetJobDefinition, recipe: Recipe,
                     recipe_name: str | None = None) -> dg.ScheduleDefinition:
    """`recipe_name`: as the code location names it (TUNELINE_RECIPE); the recipe's own name when not given."""
    return dg.ScheduleDefinition(name="retrain_schedule", job=job, cron_schedule=recipe.schedule.cron,
                                 tags=run_tags(recipe_name or recipe.name, recipe, {}, "schedule"),
                                 execution_timezone=recipe.schedule.timezone,
                                 description="Re-materialize the graph; unchanged stages are cache hits.")


def incoming_data_sensor(job: dg.UnresolvedAssetJobDefinition, recipe: Recipe) -> dg.SensorDefinition:
    @dg.sensor(name="incoming_data_sensor", job=job, minimum_interval_seconds=recipe.schedule.watch_interval_seconds,
               description="Starts a retraining run when a data file or folder the recipe reads (its datasets and "
                           "the pt corpus) changes content.")
    def _sensor(context: dg.SensorEvaluationContext, tuneline: Tuneline):
        try:
            recipe = tuneline.recipe()
            sources = watched_sources(recipe)
        except TunelineError as exc:
            return dg.SkipReason(f"not starting a run: {exc}")
        previous = json.loads(context.cursor) if context.cursor else {}
        current = snapshot(sources, tuneline.home().hasher())
        changed = changed_sources(previous, current)
        if not changed:
            return dg.SkipReason("no registered data changed")
        problems = unreadable_files(sources, changed)
        if problems:  # the cursor stays, so the fixed file triggers the run on a later tick
            return dg.SkipReason("not starting a run, malformed data: " + "; ".join(problems))
        context.update_cursor(json.dumps(current))
        return dg.RunRequest(run_key=f"data-{state_key(current)}",
                             tags={"tuneline/changed_sources": ",".join(changed),
                                   **run_tags(tuneline.recipe_name, recipe, tuneline.overrides, "sensor")})

    return _sensor
