"""Building one planned stage: its parents by identity, its own lock, build-or-reuse, publish, catalog.

The parents are the artifacts the plan names, held with shared locks while the stage reads them (retention
never removes an artifact in use). The stage's own exclusive lock makes a second run of the same fingerprint
wait and reuse the result. The catalog is healed on every visit, cache hit or not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from engine.runtime import progress
from engine.store.artifacts import Artifact, library_versions
from engine.store.digests import FILES_INTACT, ArtifactDamaged
from engine.errors import DataError, TunelineError
from engine.store.home import Home
from engine.store.space import DiskFull, check_space
from engine.store.tables import table_files
from engine.plan import Planned, ancestors
from engine.evaluate.plots import draw_stage_plots
from engine.recipe import Recipe
from engine.stage import Stage, StageRun, not_configured, view

EntryRunner = Callable[[Stage, StageRun], dict]
DAMAGED = ".damaged-"  # an artifact set aside by `tuneline run --rebuild`
DAMAGED_KEPT_DAYS = 7  # long enough to look at it, short enough that a damaged 15 GB export does not stay


class NotBuilt(TunelineError):
    """A stage's parent has no artifact for this recipe's fingerprint."""


def call_entry(stage: Stage, run: StageRun) -> dict:
    return stage.entry(run)


def require(home: Home, planned: Planned, parent: str) -> Artifact:
    """The parent artifact this plan names, or NotBuilt saying what to materialize."""
    fingerprint = planned.parents[parent]
    artifact = home.store().lookup(parent, fingerprint)
    if artifact is None:
        raise NotBuilt(f"{planned.stage.name} needs {parent} {fingerprint}, the artifact this recipe implies, and it "
                       f"is not built: materialize it too (select '*{planned.stage.name}' for the stage and "
                       "everything upstream)")
    return artifact


def heal(home: Home, plan: dict[str, Planned], names: list[str]) -> None:
    """Re-record in the catalog any of these stages' artifacts (and rows) it lacks."""
    store = home.store()
    found = [a for a in (store.lookup(name, plan[name].fingerprint) for name in names) if a is not None]
    home.catalog().record_missing([(store.manifest(a), a.path) for a in found])


def manifest_of(planned: Planned, metrics: dict, started: float) -> dict:
    return {"asset": planned.stage.name, "fingerprint": planned.fingerprint, "parents": planned.parents,
            "config": planned.config, "outside": planned.outside, "code_version": planned.code,
            "tables": dict(planned.stage.tables), "metrics": metrics,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 2),
            "versions": library_versions()}


def build_stage(home: Home, plan: dict[str, Planned], name: str, recipe: Recipe, log: Callable[[str], None] = print,
                run_entry: EntryRunner = call_entry) -> Artifact:
    """The artifact of `name` under `plan`: stored if built, else built now (or by a concurrent run we wait for)."""
    planned = plan[name]
    fp = planned.fingerprint
    parents = {p: require(home, planned, p) for p in planned.parents}
    heal(home, plan, ancestors(plan, name))  # lineage written by this stage reads its ancestors from the catalog
    store = home.store(recipe.retention.keep_last)
    with contextlib.ExitStack() as held:
        for parent in parents.values():
            held.enter_context(home.lock(parent.asset, parent.fingerprint, shared=True))
            store.touch(parent)
        held.enter_context(home.lock(name, fp, waiting=log))
        artifact = store.lookup(name, fp)
        if artifact is None:
            for parent in parents.values():  # every file this stage will read, before any work
                verified(home, parent, hashing=True)
            progress.begin(name)  # the progress lines said while it is built are its own
            try:
                artifact = run_and_publish(home, planned, recipe, parents, log, run_entry)
            finally:
                progress.end()
            passed_again(home, artifact)
        else:
            verified(home, artifact, hashing=False)  # a cache hit whose file was cut or removed is no hit
            store.touch(artifact)
        home.catalog().ensure_recorded(store.manifest(artifact), artifact.path)
    home.catalog().forget([path.name for path in store.prune(name, keep=artifact.path)])  # its rows go with it
    return artifact


def verified(home: Home, artifact: Artifact, hashing: bool) -> None:
    """Stop with one line (ArtifactDamaged) when the artifact's files differ from its manifest, recording the
    failed `files_intact` check on it in the catalog. An artifact published before digests passes unchecked."""
    try:
        home.store().verify(artifact, hashing)
    except ArtifactDamaged as damaged:
        home.catalog().record_check(artifact.fingerprint, FILES_INTACT, False, damaged.detail)
        raise


def passed_again(home: Home, artifact: Artifact) -> None:
    """A rebuilt artifact (same fingerprint) clears the failed `files_intact` check its damaged copy left."""
    catalog = home.catalog()
    if catalog.query("SELECT 1 FROM check_results WHERE artifact = ? AND check_name = ?",
                     [artifact.fingerprint, FILES_INTACT]):
        catalog.record_check(artifact.fingerprint, FILES_INTACT, True, "rebuilt; every file as its manifest lists")


def set_aside(home: Home, asset: str, fingerprint: str) -> Path | None:
    """Move a published artifact out of the way (`<asset>/.damaged-<fp>-<time>/`, removed by the start-of-run
    cleanup after DAMAGED_KEPT_DAYS) so that the next build of its fingerprint starts afresh. None: not built."""
    with home.lock(asset, fingerprint):
        path = home.store().path_for(asset, fingerprint)
        if not path.is_dir():
            return None
        aside = path.parent / f"{DAMAGED}{fingerprint}-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(path, aside)
        os.utime(aside)  # its mtime says when it was set aside: the cleanup counts from then
    return aside


def run_and_publish(home: Home, planned: Planned, recipe: Recipe, parents: dict[str, Artifact],
                    log: Callable[[str], None], run_entry: EntryRunner) -> Artifact:
    """Run the entry point in the fingerprint's work directory and publish it; called under the stage's lock."""
    stage, fp = planned.stage, planned.fingerprint
    work = home.work_dir(stage.name, fp)
    if work.exists() and not stage.training:  # left by a build that died: this stage starts over
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)  # a training stage resumes from the checkpoints it left there
    started = time.time()
    if planned.off:  # no entry point, no model, no training slot: a record of why it did not run
        log(f"{stage.name}: not configured: {planned.off}")
        return home.store().publish(stage.name, fp, work, manifest_of(planned, not_configured(planned.off), started)
                                    | {"tables": {}})
    recipe_view = view(recipe, stage, planned.keys)
    check_space(stage, recipe_view, {p: a.path for p, a in parents.items()}, work, log)  # stops a shortfall
    run = StageRun(stage.name, fp, recipe_view, {p: a.path for p, a in parents.items()}, work, home, log)
    try:
        with home.training_slot(stage.name, waiting=log) if stage.training else contextlib.nullcontext():
            metrics = run_entry(stage, run)
        if stage.outside and stage.outside(recipe_view, home.hasher()) != planned.outside:
            raise DataError(f"{stage.name}: content it reads from outside changed while it was being read "
                            "(a data file or the model was edited during the run); run it again")
        draw_plots(work, stage.name, metrics, log)
        manifest = manifest_of(planned, metrics, started)
        manifest["tables"] = {t: [f.name for f in files] for t, name in manifest["tables"].items()
                              if (files := table_files(work, name))}  # each table's files, in row order
        return home.store().publish(stage.name, fp, work, manifest)
    except BaseException as exc:
        if not stage.training:
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(stage.name, exc, work, resumes=stage.training) from exc
        raise


def draw_plots(work: Path, stage: str, metrics: dict, log: Callable[[str], None]) -> None:
    """The stage's pictures into its artifact; one that cannot be drawn is said, and never fails the stage."""
    try:
        draw_stage_plots(work, stage, metrics)
    except Exception as exc:  # noqa: BLE001 - a picture is a view of numbers the manifest keeps anyway
        log(f"{stage}: no plots ({type(exc).__name__}: {exc})")


def remove_stale_temporaries(home: Home, stages: list[Stage]) -> list[Path]:
    """What processes that died left behind and nobody will resume: temporary directories of an older layout
    (.tmp-*), the work directories of stages that are not training stages, whose lock nobody holds (a
    training stage's work directory holds its checkpoints: the next build of that fingerprint resumes there), and
    artifacts set aside by `--rebuild` more than DAMAGED_KEPT_DAYS ago."""
    training = {s.name for s in stages if s.training}
    removed = list(home.artifacts.glob("*/.tmp-*"))
    cutoff = time.time() - DAMAGED_KEPT_DAYS * 86400
    removed += [p for p in home.artifacts.glob(f"*/{DAMAGED}*") if p.stat().st_mtime < cutoff]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    for work in home.artifacts.glob("*/.work-*"):
        asset, fingerprint = work.parent.name, work.name.removeprefix(".work-")
        if asset not in training and (held := home.try_lock_exclusive(asset, fingerprint)) is not None:
            with held:
                shutil.rmtree(work, ignore_errors=True)
            removed.append(work)
    return removed
