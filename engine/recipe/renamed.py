"""Renamed recipe keys: the one table of them (old dotted key -> new dotted key, the release the old name goes away).

The loader applies it to a recipe's YAML and to --set overrides before validation, so a saved recipe keeps working
for a release after a rename: the value moves to the new key and a FutureWarning names the old key, the new one and
where the old one was written (as transformers and TRL warn of a renamed argument). Both names given is an error
naming both. A renamed section moves with everything under it (an old key is also a prefix: `old.x` -> `new.x`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import RecipeError


@dataclass(frozen=True)
class Renamed:
    old: str  # the dotted key a saved recipe may still use, e.g. "evaluation.max_samples"
    new: str  # the dotted key it is read as now
    removed_in: str  # the tuneline release from which the old key is an unknown key (pyproject's version)


# Every rename of a recipe key goes here, and out again in its removed_in release (tests/test_recipe_keys.py fails
# on an entry whose release has come). No key has been renamed yet.
RENAMED: tuple[Renamed, ...] = ()

_shown: dict = {}  # warnings' registry for these warnings: each is shown once per process, however often it loads


def renamed_to(dotted: str) -> tuple[Renamed, str] | None:
    """The table entry whose old key is `dotted` or a section above it, and the key `dotted` is read as now."""
    for entry in RENAMED:
        if dotted == entry.old or dotted.startswith(entry.old + "."):
            return entry, entry.new + dotted[len(entry.old):]
    return None


def rename_in_file(raw: dict, path: Path) -> None:
    """Move every old key written in a recipe's YAML (already read into `raw`) to its new key, warning once each."""
    for entry in RENAMED:
        old_parent, old_key = _parent(raw, entry.old)
        if old_parent is None or old_key not in old_parent:
            continue
        new_parent, new_key = _parent(raw, entry.new, create=True, path=path)
        if new_key in new_parent:
            raise RecipeError(f"recipe {path}: {entry.old} and {entry.new} are both set; {entry.old} is the old name "
                              f"of {entry.new} (it stops working in release {entry.removed_in}): keep {entry.new} only")
        new_parent[new_key] = old_parent.pop(old_key)
        _warn(f"{entry.old} is renamed {entry.new} ({entry.old} stops working in release {entry.removed_in}): "
              f"rename it in {path}", str(path), _line_of(path, entry.old))


def rename_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """--set overrides with every old key replaced by its new one, warning once each."""
    renamed: dict[str, Any] = {}
    for dotted, value in overrides.items():
        found = renamed_to(dotted)
        if found is not None:
            entry, dotted_now = found
            if dotted_now in overrides:
                raise RecipeError(f"--set {dotted} and --set {dotted_now} are both given; {entry.old} is the old name "
                                  f"of {entry.new} (it stops working in release {entry.removed_in}): keep "
                                  f"{dotted_now} only")
            _warn(f"{entry.old} is renamed {entry.new} ({entry.old} stops working in release {entry.removed_in}): "
                  f"use --set {dotted_now}", "--set", 0)
            dotted = dotted_now
        renamed[dotted] = value
    return renamed


def _parent(raw: dict, dotted: str, create: bool = False, path: Path | None = None) -> tuple[dict | None, str]:
    """The mapping that holds a dotted key's last part, and that part (None: a mapping on the way is absent)."""
    *sections, key = dotted.split(".")
    node: Any = raw
    for depth, section in enumerate(sections):
        if create and node.get(section) is None:  # absent, or an empty section (`sft:`)
            node[section] = {}
        node = node.get(section)
        if not isinstance(node, dict):
            if create:
                raise RecipeError(f"recipe {path}: {'.'.join(sections[:depth + 1])} is {node!r}, a value, not a "
                                  "section with keys")
            return None, key
    return node, key


def _line_of(path: Path, dotted: str) -> int:
    """The line a dotted key is written on in a YAML file (0 where it cannot tell, e.g. under a `<<:` merge)."""
    node = yaml.compose(path.read_text(encoding="utf-8-sig"), Loader=yaml.SafeLoader)
    line = 0
    for part in dotted.split("."):
        pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                    None) if isinstance(node, yaml.MappingNode) else None
        if pair is None:
            return 0
        line, node = pair[0].start_mark.line + 1, pair[1]
    return line


def _warn(message: str, filename: str, line: int) -> None:
    # warn_explicit: the warning points at the recipe line to change (path:line:), not at this module's source
    warnings.warn_explicit(message, FutureWarning, filename, line, module="engine.recipe.renamed", registry=_shown)
