"""The fault each asset check guards against, planted in a copy of a good artifact (tests/test_check_faults.py).

A fault module (tests/faults_*.py) holds FAULTS: (asset, check) -> Fault. `plant` gets a copy of a good artifact
(its directory copied, its metrics a deep copy) and the recipe it was built with, damages what the check guards,
and returns the artifact and recipe the checks are then evaluated with; `detail` is a regular expression the failed
check's detail line must match. `good` replaces the tiny graph's artifact as the starting point where that one
cannot show the fault (a stage the tiny recipe does not run, a check of vLLM on a machine without it).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.recipe import Recipe
from engine.store.artifacts import Artifact
from engine.store.digests import MANIFEST

Plant = Callable[[Artifact, Recipe], tuple[Artifact, Recipe]]


@dataclass(frozen=True)
class Fault:
    plant: Plant
    detail: str
    good: Callable[[Artifact, Recipe], tuple[Artifact, Recipe]] | None = None


def copy_artifact(artifact: Artifact, into: Path) -> Artifact:
    """A copy a fault may damage: the directory copied under `into` (a link stays a link: the deployment's link to
    its export is recorded as one), the metrics deep-copied; its parents (which a check may read, as
    formatted_data's read base_model's tokenizer and clean_data's rows) linked beside it as the store keeps them,
    <asset>/<fingerprint>, never to be damaged."""
    target = into / artifact.asset / artifact.fingerprint
    shutil.copytree(artifact.path, target, symlinks=True)
    for parent, fingerprint in json.loads((target / MANIFEST).read_text()).get("parents", {}).items():
        original, link = artifact.path.parent.parent / parent / fingerprint, into / parent / fingerprint
        if original.is_dir() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(original.resolve(), target_is_directory=True)
    return Artifact(artifact.asset, artifact.fingerprint, target, copy.deepcopy(artifact.metrics))


def with_metrics(**changes) -> Plant:
    """A fault in the recorded numbers alone (for checks that compare two measured numbers)."""
    def plant(artifact: Artifact, recipe: Recipe) -> tuple[Artifact, Recipe]:
        artifact.metrics.update(changes)
        return artifact, recipe
    return plant
