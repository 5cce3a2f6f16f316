"""The Launchpad's form: one job per recipe file (`<recipe>_pipeline`), whose run config is the recipe itself, typed.

Every recipe key becomes a Dagster config field with its type, its default taken from that recipe, its description,
and a dropdown (Dagster Enum) for its choices. The job's ConfigMapping checks the values with the same rules as the
CLI (assets.resource.validated_recipe) when Dagster validates the run's config, before any step starts, and hands
the `tuneline` resource the recipe and the keys that differ from it as overrides.
"""

from __future__ import annotations

import json
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel

from engine.errors import TunelineError
from engine.recipe import RECIPE_DIR, Recipe, load_recipe, resolve_recipe_path



def template_names() -> list[str]:
    from engine.data.templates import USER_MARKERS
    return list(USER_MARKERS)


def scheduler_names() -> list[str]:
    from transformers.trainer_utils import SchedulerType  # a recipe naming a scheduler imports it already
    return [s.value for s in SchedulerType]


# choices a str field takes that its pydantic type leaves to a validator: the same lists those validators check
EXTRA_CHOICES = {"data.template": template_names, "lr_scheduler_type": scheduler_names}
ENUMS: dict[str, dg.Enum] = {}


def job_name(recipe_path: Path) -> str:
    return f"{recipe_path.stem.replace('-', '_')}_pipeline"


def launch_recipes(env_recipe: str) -> list[Path]:
    """The recipe files that get a job: every one in pipelines/recipes/, and TUNELINE_RECIPE when it is a path."""
    paths = sorted(RECIPE_DIR.glob("*.yaml"))
    named = resolve_recipe_path(env_recipe).resolve()
    return paths + ([named] if named not in [p.resolve() for p in paths] else [])


def recipe_jobs(env_recipe: str, artifact_root: str, tags: dict[str, str], hooks: set) -> list:
    """A job for each recipe file. A shipped recipe that does not load gets no job and a warning that says why;
    TUNELINE_RECIPE's own failure stops the code location (build_definitions loads it first)."""
    jobs = []
    for path in launch_recipes(env_recipe):
        try:
            jobs.append(recipe_job(path, artifact_root, tags, hooks))
        except TunelineError as exc:
            warnings.warn(f"no {job_name(path)} job in the Launchpad: {exc}", stacklevel=2)
    return jobs


def recipe_job(recipe_path: Path, artifact_root: str, tags: dict[str, str],
               hooks: set) -> dg.UnresolvedAssetJobDefinition:
    """`<recipe>_pipeline`: every asset, launched with the recipe's keys as a typed form."""
    recipe, _ = load_recipe(str(recipe_path))
    name_or_path = recipe_path.stem if recipe_path.parent.resolve() == RECIPE_DIR else str(recipe_path)

    def to_resource(values: dict) -> dict:
        overrides = differing(values, recipe.model_dump(mode="json"))
        from assets.resource import validated_recipe
        try:  # the CLI's rules: a refused value stops the launch, naming the key
            validated_recipe(name_or_path, json.dumps(overrides, sort_keys=True))
        except TunelineError as exc:
            raise dg.DagsterInvalidConfigError(str(exc), [], values) from None
        return {"resources": {"tuneline": {"config": {"recipe_name": name_or_path, "overrides": overrides,
                                                      "artifact_root": artifact_root}}}}

    return dg.define_asset_job(
        job_name(recipe_path), selection=dg.AssetSelection.all(), tags={**tags, "tuneline/recipe": name_or_path},
        hooks=hooks, config=dg.ConfigMapping(config_schema=section_schema(type(recipe), recipe, ""),
                                             config_fn=to_resource),
        description=f"Every stage with the recipe {name_or_path} ({recipe_path}); the Launchpad's form holds its "
                    "keys, each with its type, default and description.")


def section_schema(section: type[BaseModel], value: BaseModel, prefix: str) -> dict[str, dg.Field]:
    """The Dagster fields of a recipe section, its values as defaults (recursing into sub-sections)."""
    fields = {}
    for name, info in section.model_fields.items():
        key, current = f"{prefix}{name}", getattr(value, name)
        description = info.description or ""
        if _section_class(info.annotation) is not None:
            fields[name] = dg.Field(section_schema(type(current), current, f"{key}."), description=description)
            continue
        config_type = dagster_type(info.annotation, key)
        default = json.loads(json.dumps(_dumped(current)))
        fields[name] = dg.Field(config_type, default_value=default, is_required=False, description=description)
    return fields


def dagster_type(annotation: Any, key: str) -> Any:
    """A pydantic field's type as a Dagster config type: Literal of strings -> Enum, Optional -> Noneable, lists,
    str -> str maps; a model list (clean.steps, grpo.rewards) -> a list of free-form maps, which the recipe's rules check."""
    annotation = _unannotated(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if all(_section_class(a) for a in rest):  # one of several step models: the recipe's rules check it
            inner = dg.Permissive()
        else:
            inner = dagster_type(rest[0], key) if len(rest) == 1 else dg.Any
        return dg.Noneable(inner) if type(None) in args else inner
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return enum(key, list(args))
        return int if all(isinstance(a, int) for a in args) else dg.Any
    if origin is list:
        return [dg.Permissive() if _section_class(args[0]) else dagster_type(args[0], key)]  # grpo.rewards: maps
    if origin is dict:
        return dg.Map(str, dagster_type(args[1], key))
    if annotation in (bool, int, float):
        return annotation
    if annotation is str:
        choices = EXTRA_CHOICES.get(key) or EXTRA_CHOICES.get(key.rsplit(".", 1)[-1])
        return enum(key, sorted(choices())) if choices else str
    raise TypeError(f"recipe key {key}: no Dagster config type for {annotation!r} (pipelines/launchpad.py)")


def enum(key: str, values: list[str]) -> dg.Enum:
    """One Enum per field name (pt/sft/reward/dpo share theirs): Dagster names config types repository-wide."""
    name = key.rsplit(".", 1)[-1]
    existing = ENUMS.get(name)
    if existing is None or [v.config_value for v in existing.enum_values] != values:
        name = name if existing is None else key.replace(".", "_")
        existing = ENUMS.setdefault(name, dg.Enum(name, [dg.EnumValue(v) for v in values]))
    return existing


def differing(values: dict, recipe: dict, prefix: str = "") -> dict[str, Any]:
    """The dotted keys whose form value differs from the recipe's (what `--set` would say)."""
    overrides = {}
    for name, value in values.items():
        if isinstance(value, dict) and isinstance(recipe.get(name), dict) and name in _SECTION_KEYS.get(prefix, ()):
            overrides.update(differing(value, recipe[name], f"{prefix}{name}."))
        elif value != recipe.get(name):
            overrides[f"{prefix}{name}"] = value
    return overrides


def _section_keys(section: type[BaseModel], prefix: str = "") -> dict[str, set[str]]:
    """prefix -> the names under it that are sections (node_selector, a dict value, is not)."""
    keys: dict[str, set[str]] = {prefix: set()}
    for name, info in section.model_fields.items():
        sub = _section_class(info.annotation)
        if sub is not None:
            keys[prefix].add(name)
            keys.update(_section_keys(sub, f"{prefix}{name}."))
    return keys


def _section_class(annotation: Any) -> type[BaseModel] | None:
    annotation = _unannotated(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unannotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _dumped(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_dumped(v) for v in value]
    return value


_SECTION_KEYS = _section_keys(Recipe)
