"""Reading a recipe: a shipped name or a YAML path, parsed strictly, renamed keys moved, --set overrides applied,
validated; every problem one line naming the key, the value and what was expected."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import RecipeError
from engine.recipe.recipe import Recipe
from engine.recipe.renamed import rename_in_file, rename_overrides

RECIPE_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "recipes"


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe is a YAML path, or the name of one shipped in pipelines/recipes/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist (expected a YAML recipe)")
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise RecipeError(f"no recipe named {name_or_path!r}: expected a .yaml path or one of {names}")
    return shipped


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a recipe that sets a key twice is refused instead."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges, and keys beside it may override what it brings
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    earlier = first_line.get(key)
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it
                if earlier is not None:
                    raise DuplicateKeyError(None, None, f"key {key!r} appears twice, at line {earlier} and "
                                                        f"line {line}", key_node.start_mark)
                first_line[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """A YAML file as Python data; a non-UTF-8 byte, a syntax error or a repeated key is a one-line RecipeError."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecipeError(f"{what} {path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                          f"(line {line}); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise RecipeError(f"{what} {path}: {exc.problem}; a key may be set once") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise RecipeError(f"{what} {path} is not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from None


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> tuple[Recipe, Path]:
    """Load, rename old keys (engine/recipe/renamed.py), override (dotted keys, e.g. {"sft.learning_rate": 1e-4})
    and validate a recipe.

    Returns the recipe and its file path. Raises RecipeError naming the key and what was expected, one line per
    problem.
    """
    path = resolve_recipe_path(name_or_path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of sections at the top level")
    rename_in_file(raw, path)
    for dotted, value in rename_overrides(overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return Recipe.model_validate(raw), path
    except ValidationError as exc:
        raise RecipeError("\n".join(f"recipe {path}: {describe(e)}" for e in exc.errors())) from None


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set `sft.learning_rate` (or `clean.steps.6.threshold`: a number picks a list item) in a raw recipe."""
    parts = dotted.split(".")
    if not all(parts):
        raise RecipeError(f"override {dotted!r}: expected a dotted recipe key such as sft.learning_rate")
    node: Any = tree
    for depth, key in enumerate(parts):
        path = ".".join(parts[:depth])
        if isinstance(node, list):
            if not (key.isdigit() and int(key) < len(node)):
                raise RecipeError(f"override {dotted!r}: {path} is a list of {len(node)} items; "
                                  f"expected an index from 0 to {len(node) - 1}, not {key!r}")
            key = int(key)
        elif not isinstance(node, dict):
            raise RecipeError(f"override {dotted!r}: {path} is {node!r}, a value, not a section with keys")
        if depth == len(parts) - 1:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:  # absent, or an empty section (`sft:`)
                parent = section_at(tuple(parts[:depth]))
                if parent is not None and key in parent.model_fields and section_at(tuple(parts[:depth + 1])) is None:
                    raise RecipeError(f"override {dotted!r}: {'.'.join(parts[:depth + 1])} is a value, "
                                      "not a section with keys")
                node[key] = {}
            node = node[key]


def _unwrap(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def section_at(loc: tuple) -> type[BaseModel] | None:
    """The recipe section a validation error's location points into (None where it cannot tell)."""
    node: Any = Recipe
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int) and typing.get_origin(node) is list:
            node = typing.get_args(node)[0]
        elif isinstance(node, type) and issubclass(node, BaseModel) and str(part) in node.model_fields:
            node = node.model_fields[str(part)].annotation
        elif typing.get_origin(node) in (typing.Union, types.UnionType):  # a clean step, named by its `step` tag
            node = next((m for m in typing.get_args(node) if isinstance(m, type) and issubclass(m, BaseModel)
                         and part in typing.get_args(m.model_fields["step"].annotation)), None)
        else:
            return None
    node = _unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def describe(error: dict) -> str:
    """One line per validation error, with a did-you-mean for unknown keys."""
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] != "extra_forbidden":
        message = error["msg"].removeprefix("Value error, ")
        if not key:  # a check across sections: its message names the keys, the input is the whole recipe
            return message
        return f"{key}: {message} (got {error.get('input')!r})"
    section = section_at(error["loc"][:-1])
    if section is None:
        return f"{key}: unknown key"
    known = list(section.model_fields)
    close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
    hint = f"; did you mean {'.'.join([*map(str, error['loc'][:-1]), close[0]])!r}?" if close else ""
    return f"{key}: unknown key{hint} (expected one of: {', '.join(known)})"
