"""The recipe key reference, generated from the schema's field descriptions (never kept by hand).

`python -m engine.recipe.reference` writes docs/recipe-keys.md (every key by section: type, default, description)
and docs/recipe.schema.json (pydantic's JSON Schema, for editors: a YAML language server reads a recipe that starts
with `# yaml-language-server: $schema=<path to>/docs/recipe.schema.json`); `--check` writes nothing and exits 1
naming each file that is out of date (tests/test_recipe_reference.py does the same).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from engine.recipe.recipe import Recipe

DOCS = Path(__file__).resolve().parents[2] / "docs"
KEYS_FILE = DOCS / "recipe-keys.md"
SCHEMA_FILE = DOCS / "recipe.schema.json"

PLAIN = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def json_schema() -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Recipe.model_json_schema()}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def members(annotation: Any) -> list:
    """The types an annotation admits: Annotated unwrapped, a union split."""
    if typing.get_origin(annotation) is Annotated:
        return members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in members(a)]
    return [annotation]


def step_name(section: type[BaseModel]) -> str | None:
    """The `step` tag of a clean step's class (None for any other section)."""
    field = section.model_fields.get("step")
    return typing.get_args(field.annotation)[0] if field is not None else None


def type_text(annotation: Any) -> str:
    """A key's type in words: "integer", "one of: lora, dora, full, freeze", "list of string", "string or null"."""
    steps = [step_name(m) for m in members(annotation) if is_section(m) and step_name(m)]
    parts = [f"step ({', '.join(steps)})"] if steps else []
    for member in members(annotation):
        origin = typing.get_origin(member)
        if origin is Literal:
            parts.append("one of: " + ", ".join(map(str, typing.get_args(member))))
        elif origin is list:
            items = type_text(typing.get_args(member)[0])
            parts.append(f"list, each {items}" if items.startswith("one of") else f"list of {items}")
        elif origin is dict:
            key, value = typing.get_args(member)
            parts.append(f"mapping of {type_text(key)} to {type_text(value)}")
        elif is_section(member) and step_name(member):
            continue  # named with the other steps
        elif is_section(member):
            parts.append("section")
        else:
            parts.append(PLAIN.get(member, getattr(member, "__name__", str(member))))
    return " or ".join(parts)


def constraints_text(field: FieldInfo) -> str:
    found = [f"{sign} {getattr(m, name)}" for m in field.metadata for name, sign in BOUNDS
             if getattr(m, name, None) is not None]
    found += [f"matching {m.pattern}" for m in field.metadata if getattr(m, "pattern", None)]
    return ", ".join(found)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel) and not step_name(type(value)):
        return "(its keys' defaults)"
    if isinstance(value, list):
        value = [v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def markdown(text: str) -> str:
    """Text as one Markdown line: `<placeholders>` outside code spans escaped (else read as HTML tags)."""
    spans = " ".join(text.split()).split("`")
    return "`".join(s if i % 2 else s.replace("<", "&lt;").replace(">", "&gt;") for i, s in enumerate(spans))


def cell(text: str) -> str:
    return markdown(text).replace("|", "\\|")


def sections(section: type[BaseModel], dotted: str = "", holder: FieldInfo | None = None
             ) -> Iterator[tuple[str, type[BaseModel], FieldInfo | None]]:
    """(dotted name, section class, the field holding it) for a section and every section under it, parents first;
    a clean step is named by its tag: clean.steps[step: normalize]."""
    yield dotted, section, holder
    for name, field in section.model_fields.items():
        for member in members(field.annotation):
            items = typing.get_args(member)[0] if typing.get_origin(member) is list else member
            for kind in filter(is_section, members(items)):
                where = f"{dotted}.{name}" if dotted else name
                yield from sections(kind, f"{where}[step: {step_name(kind)}]" if step_name(kind) else where, field)


def section_table(section: type[BaseModel], dotted: str) -> list[str]:
    """The section's keys as a Markdown table; the top level leaves out its sections (each has its own table)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in section.model_fields.items():
        kind = type_text(field.annotation)
        if is_section(field.annotation):
            if not dotted:
                continue
            kind = f"section (see `{dotted}.{name}`)"
        if bounds := constraints_text(field):
            kind += f", {bounds}"
        rows.append(f"| `{name}` | {cell(kind)} | {cell(default_text(field))} | {cell(field.description or '')} |")
    return rows


# written by hand: pydantic gives the JSON Schema, no library turns a model into a Markdown table without Sphinx
def key_reference() -> str:
    lines = ["# Recipe keys", "",
             "Generated from the schema in `engine/recipe/` by `python -m engine.recipe.reference`; do not edit by "
             "hand (tests/test_recipe_reference.py fails when this file or "
             "[recipe.schema.json](recipe.schema.json) is out of date). Keys follow LLaMA-Factory's names; where a "
             "default differs from LLaMA-Factory's, the description gives LLaMA-Factory's. A description that starts "
             "with *check:* or *gate:* is a threshold only a check or gate reads, and *operational:* a key that says "
             "how a stage runs: neither is part of any artifact's fingerprint, so changing one rebuilds nothing. "
             "Renamed keys keep working for a release (engine/recipe/renamed.py).", ""]
    for dotted, section, holder in sections(Recipe):
        lines += [f"## `{dotted}`" if dotted else "## Top level", ""]
        about = inspect.cleandoc(section.__doc__) if section.__doc__ else holder.description if holder else None
        lines += [markdown(about), ""] if dotted and about else []
        lines += section_table(section, dotted) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def outputs() -> dict[Path, str]:
    return {KEYS_FILE: key_reference(), SCHEMA_FILE: schema_text()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.recipe.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run python -m engine.recipe.reference", file=sys.stderr)
        return 1 if stale else 0
    DOCS.mkdir(exist_ok=True)
    for path, text in outputs().items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
