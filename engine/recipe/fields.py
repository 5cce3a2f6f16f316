"""What every recipe section shares: the number types, the base section, and the field markings (check thresholds,
operational keys) that decide what a fingerprint covers."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# YAML's `true` is not 1: integers are strict (no booleans, no 3.0, no "3"). Floats take ints (`learning_rate: 1`)
# and numeric strings, because PyYAML reads `1e-4` (no dot) as a string; booleans are refused there too.
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]


class Section(BaseModel):
    # every float is finite: a recipe's .inf or .nan would only fail hours later, inside training
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_threshold(default: Any, **constraints: Any) -> Any:
    """A field that only a check or gate reads: it is not part of any artifact's fingerprint, so changing it
    re-runs the check, never the stage."""
    return Field(default, json_schema_extra={"threshold": True}, **constraints)


def operational(default: Any, **constraints: Any) -> Any:
    """A field that says how a stage runs, never what it makes (how often it checkpoints): the stage reads it,
    its fingerprint leaves it out, so changing it rebuilds nothing."""
    return Field(default, json_schema_extra={"operational": True}, **constraints)


def is_threshold(section: type[BaseModel], name: str) -> bool:
    extra = section.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("threshold"))


def is_fingerprinted(section: type[BaseModel], name: str) -> bool:
    extra = section.model_fields[name].json_schema_extra
    return not (isinstance(extra, dict) and (extra.get("threshold") or extra.get("operational")))


def fingerprint_value(value: Any) -> Any:
    """A recipe value as a fingerprint sees it: a section without its check thresholds and operational keys, in
    JSON form."""
    if isinstance(value, BaseModel):
        return {name: fingerprint_value(getattr(value, name)) for name in type(value).model_fields
                if is_fingerprinted(type(value), name)}
    if isinstance(value, (list, tuple)):
        return [fingerprint_value(v) for v in value]
    return value


def get_dotted(recipe: BaseModel, dotted: str) -> Any:
    """The value at a dotted key such as "sft.learning_rate" (KeyError naming the key when there is none)."""
    value: Any = recipe
    for part in dotted.split("."):
        if not isinstance(value, BaseModel) or part not in type(value).model_fields:
            raise KeyError(f"recipe key {dotted!r} does not exist")
        value = getattr(value, part)
    return value
