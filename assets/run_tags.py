"""The tags that tell runs apart in the runs list: which recipe, which overrides, which command, which code, and why
a run failed. Every run carries them, whoever starts it: the CLI and the schedule and sensor set them up front;
a Launchpad run gets the ones its job's tags lack when its `tuneline` resource starts (assets/resource.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import dagster as dg

from engine.recipe import Recipe

RECIPE, DIGEST, OVERRIDES, COMMAND, VERSION, FAILURE = (
    "tuneline/recipe", "tuneline/recipe_digest", "tuneline/overrides", "tuneline/command", "tuneline/version",
    "tuneline/failure")
TAG_LIMIT = 400  # a tag is read in one line of the runs list; the run's log holds the rest


def run_tags(recipe_name: str, recipe: Recipe | None, overrides: dict[str, Any], command: str) -> dict[str, str]:
    tags = {RECIPE: recipe_name, OVERRIDES: overrides_text(overrides), COMMAND: command, VERSION: version()}
    return {**tags, DIGEST: recipe_digest(recipe)} if recipe is not None else tags


def recipe_digest(recipe: Recipe) -> str:
    """The whole resolved recipe (overrides applied, every default spelled out): equal digests, equal recipes."""
    return hashlib.sha256(recipe.model_dump_json().encode()).hexdigest()[:16]


def overrides_text(overrides: dict[str, Any]) -> str:
    """As `--set` takes them: `sft.learning_rate=0.01 data.cutoff_len=256` (empty: none)."""
    return one_line(" ".join(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                             for key, value in sorted(overrides.items())))


@lru_cache(maxsize=1)
def version() -> str:
    """The package's version, and the git commit when the code runs from a checkout (`+dirty` when edited)."""
    text = metadata.version("tuneline")
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12",
                                 "--exclude=*"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return text
    return f"{text}+{commit.stdout.strip()}" if commit.returncode == 0 and commit.stdout.strip() else text


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= TAG_LIMIT else line[:TAG_LIMIT - 3] + "..."


def failure_line(asset: str, message: str) -> str:
    """`asset: message` in one line, what the runs list shows of a failed run."""
    return one_line(f"{asset}: {message or 'failed'}")


def tag_failure_once(instance: dg.DagsterInstance, run_id: str, asset: str, message: str) -> None:
    """The first failure of a run names it (later ones are its consequences, or in the run's log)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and FAILURE not in run.tags:
        instance.add_run_tags(run_id, {FAILURE: failure_line(asset, message)})


@dg.failure_hook(name="tag_failure")
def tag_failure(context: dg.HookContext) -> None:
    """A job's failed step tags its run `tuneline/failure: <asset>: <message>`."""
    error = context.op_exception
    tag_failure_once(context.instance, context.run_id, context.op.name, str(error) if error is not None else "")


def tag_failed_result(instance: dg.DagsterInstance, result) -> None:
    """The same tag for a run without the job's hook (the CLI's `materialize`): its first failed step."""
    for event in result.get_step_failure_events():
        error = event.event_specific_data.error if event.event_specific_data else None
        tag_failure_once(instance, result.run_id, event.step_key, error.message if error else event.message or "")
        return
