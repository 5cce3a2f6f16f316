"""Free space, checked before a stage that writes models starts: the estimate its declaration gives
(Stage.writes; engine/models/footprint.py counts it) of the most it will hold on disk at once, compared with what the
home's filesystem has free. A shortfall stops the stage before any work, in one line.

What the stage's work directory already holds (a resumed training's checkpoints) is subtracted. The operator can
skip the check with TUNELINE_SKIP_SPACE_CHECK=1 (a filesystem that reports free space wrongly, or a known
smaller need)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine.errors import TunelineError

if TYPE_CHECKING:
    from engine.stage import Stage

SKIP = "TUNELINE_SKIP_SPACE_CHECK"


class NotEnoughSpace(TunelineError):
    """The stage's estimated disk use is more than the home's filesystem has free."""


class DiskFull(TunelineError):
    """The disk filled while a stage wrote (the estimate was short, or something else wrote meanwhile): nothing of
    it was published and earlier artifacts are untouched."""

    def __init__(self, stage: str, cause: OSError, work: Path, resumes: bool):
        self.errno = cause.errno
        where = " -> ".join(str(f) for f in (cause.filename, cause.filename2) if f) or f"into {work}"
        again = ("run the same command to resume from its last complete checkpoint" if resumes
                 else "run the same command to build it again")
        super().__init__(f"{stage}: the disk is full ({cause.strerror or cause}) writing {where}; nothing of it was "
                         f"published and earlier artifacts are untouched: free some space, then {again}")


@dataclass(frozen=True)
class Estimate:
    total: int  # bytes the stage may hold at once
    counts: str  # what was counted, for the message
    checkpoints: bool = False  # checkpoints counted: fewer kept would need less


def gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def estimate(stage: Stage, recipe: Any, parents: dict[str, Path]) -> Estimate | None:
    """What `stage` may hold on disk at once, or None for a stage that writes little (data, evaluation, deployment)
    or trains nothing under this recipe (pt off names the base model)."""
    if stage.writes is None or (stage.trains is not None and not stage.trains(recipe)):
        return None
    return stage.writes.estimate(recipe, parents)


def used(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0


def check_space(stage: Stage, recipe: Any, parents: dict[str, Path], work: Path,
                log: Callable[[str], None] = print) -> Estimate | None:
    """Stop `stage` before it starts if its estimate, less what its work directory already holds, is more than the
    free space of the filesystem `work` is on. Returns the estimate (None: not counted)."""
    found = estimate(stage, recipe, parents)
    if found is None:
        return None
    need = max(found.total - used(work), 0)
    free = shutil.disk_usage(next(p for p in (work, *work.parents) if p.exists())).free
    if need <= free:
        return found
    if os.environ.get(SKIP) == "1":
        log(f"{stage.name}: needs about {gb(need)}, {gb(free)} free; {SKIP}=1: running anyway")
        return found
    fewer = ", lower save_total_limit" if found.checkpoints else ""
    raise NotEnoughSpace(f"{stage.name} needs about {gb(need)} on disk ({found.counts}) and {work.parent.parent} has "
                         f"{gb(free)} free: free some space{fewer}, or set {SKIP}=1 to run anyway")
