"""The plan: every stage's fingerprint under one recipe, computed before any work.

fingerprint = sha256(stage name, parents' fingerprints by name, the values of the recipe keys it reads, the
identity of the content it reads from outside, its code version). A run resolves every input to the artifact
its own plan names, never to whatever was written last, so runs side by side on one home cannot see each
other's inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

from engine.store.codeversion import code_version
from engine.store.content import ContentHasher
from engine.recipe import Recipe
from engine.stage import Stage, keyed_values, view


@dataclass(frozen=True)
class Planned:
    """One stage under one recipe: what it reads and the fingerprint that follows."""
    stage: Stage
    fingerprint: str
    parents: dict[str, str]  # parent stage -> the fingerprint this plan gives it
    keys: tuple[str, ...]
    config: dict
    outside: dict
    code: str
    off: str | None = None  # why the stage is not configured under this recipe (None: it is)


def fingerprint(name: str, parents: dict[str, str], config: dict, outside: dict, code: str) -> str:
    payload = json.dumps({"asset": name, "parents": parents, "config": config, "outside": outside, "code": code},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def topological(stages: Iterable[Stage]) -> list[Stage]:
    """Stages ordered so that every parent comes before its children; ValueError names a cycle or an unknown
    parent."""
    by_name = {s.name: s for s in stages}
    ordered: list[Stage] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"the stages form a cycle: {' -> '.join((*chain, name))}")
        if name not in by_name:
            raise ValueError(f"stage {chain[-1]} names parent {name!r}, which is not a stage")
        state[name] = "visiting"
        for parent in by_name[name].parents:
            visit(parent, (*chain, name))
        state[name] = "done"
        ordered.append(by_name[name])
    for stage in by_name.values():
        visit(stage.name, ())
    return ordered


def make_plan(stages: Iterable[Stage], recipe: Recipe, hasher: ContentHasher | None = None) -> dict[str, Planned]:
    """{stage name: Planned}, parents first. Hashes outside content (remembered by the hasher)."""
    hasher = hasher or ContentHasher()
    plan: dict[str, Planned] = {}
    for stage in topological(stages):
        parent_names, keys = stage.reads(recipe)
        parents = {p: plan[p].fingerprint for p in parent_names}
        config = keyed_values(recipe, keys)
        off = stage.off(recipe) if stage.off else None
        outside = stage.outside(view(recipe, stage, keys), hasher) if stage.outside and not off else {}
        code = code_version(stage.entry)
        plan[stage.name] = Planned(stage, fingerprint(stage.name, parents, config, outside, code), parents, keys,
                                   config, outside, code, off)
    hasher.save()
    return plan


def ancestors(plan: dict[str, Planned], name: str) -> list[str]:
    """Every stage `name` is made from under this plan (its parents, theirs, ...), parents first."""
    seen: list[str] = []

    def walk(stage: str) -> None:
        for parent in plan[stage].parents:
            if parent not in seen:
                walk(parent)
                seen.append(parent)
    walk(name)
    return seen
