"""The recipe a command names, checked with its `--set` overrides, and the `tuneline` resource built from it:
where the CLI takes the recipe check and the resource from the Dagster layer (assets/, pipelines/definitions.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.options import parse_overrides


def checked_recipe(args: argparse.Namespace):
    """(the validated recipe, the overrides): a bad recipe, data path or model path stops here, before any work."""
    from assets.resource import validated_recipe
    overrides = parse_overrides(args.set)
    return validated_recipe(args.recipe, json.dumps(overrides, sort_keys=True)), overrides


def tuneline_resource(recipe: str, artifact_root: str, overrides: dict):
    """The resource every asset uses (recipe, artifact root, plan), for the recipe named on the command line."""
    from pipelines.definitions import resources
    return resources(recipe, str(Path(artifact_root).resolve()), overrides)["tuneline"]
