"""Materializing a selection of the asset graph through Dagster's own `materialize()`, with the recipe, overrides and
artifact root a command names: what `tuneline run` and `tuneline eval` share."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engine.errors import TunelineError
from engine.runtime.startup import collector_paused
from pipelines.cli.instance import RUN_TAGS, dagster_home, reap_dead_runs
from pipelines.cli.quiet import quiet_libraries, quiet_llmcompressor
from pipelines.cli.recipe import checked_recipe, tuneline_resource
from pipelines.cli.stopped import keep_ctrl_c_from_dagster_helpers


def materialize(args: argparse.Namespace, select: str | None, before=None):
    """Materialize `select` (None: everything) with the CLI's recipe, overrides and artifact root; `before(tuneline)`
    may stop it (a TunelineError) once the plan is known, before any work."""
    with collector_paused():
        if not args.verbose:
            quiet_libraries()
            quiet_llmcompressor()
        import pipelines.definitions  # noqa: F401  (the asset modules: the rest of the heavy imports)
    recipe, overrides = checked_recipe(args)  # a bad recipe, data path or model path stops here, before any work

    import dagster as dg
    from engine.runtime import progress
    from assets.run_tags import run_tags, tag_failed_result
    from engine.build import remove_stale_temporaries
    from engine.graph import STAGES
    from engine.store.home import check_home
    from pipelines.definitions import ASSETS, resources
    root = str(Path(args.artifact_root).resolve())
    check_home(root, "--artifact-root")  # before anything is written under it
    Path(root).mkdir(parents=True, exist_ok=True)  # an unusable --artifact-root is said before any work
    if not os.access(root, os.W_OK):
        raise TunelineError(f"--artifact-root {root}: not writable (expected a folder this user can write)")
    dagster_home(root)
    selection = selection_of(select, dg)
    tuneline = tuneline_resource(args.recipe, root, overrides)
    check_upstream_built(tuneline, selection, dg)
    if before:
        before(tuneline)
    set_aside_to_rebuild(tuneline, getattr(args, "rebuild", None), selection, dg)
    remove_stale_temporaries(tuneline.home(), STAGES)
    show_progress(args.verbose)
    keep_ctrl_c_from_dagster_helpers()
    started = time.time()
    with dg.DagsterInstance.get() as instance:
        reap_dead_runs(instance)
        log_level = "DEBUG" if args.verbose else "CRITICAL"  # a failed step is said in one line after the table
        with progress.heartbeat():
            result = dg.materialize(ASSETS, resources=resources(args.recipe, root, overrides), instance=instance,
                                    selection=selection, raise_on_error=False,
                                    tags={**RUN_TAGS, **run_tags(args.recipe, recipe, overrides, command_line(args))},
                                    run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
        if not result.success:
            tag_failed_result(instance, result)
    return result, time.time() - started


def command_line(args: argparse.Namespace) -> str:
    """The run's `tuneline/command` tag: the command and what it selected (the recipe and --set have their own)."""
    options = [(flag, getattr(args, name, None)) for flag, name in (("--select", "select"), ("--rebuild", "rebuild"))]
    return " ".join(["tuneline", args.command, *(f"{flag} {value}" for flag, value in options if value)])


def show_progress(verbose: bool) -> None:
    """The stages' progress lines (engine/runtime/progress.py) on stderr; with --verbose, Dagster's own log shows
    them."""
    import logging
    from engine.runtime import progress
    progress.forget()
    if verbose or any(getattr(h, "tuneline_cli", False) for h in progress.LOGGER.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.tuneline_cli = True
    progress.LOGGER.addHandler(handler)
    progress.LOGGER.propagate = False  # said once: not again by whatever handler the root logger has


def selection_of(select: str | None, dg):
    """`--select`: comma-separated asset names, or one Dagster selection string such as '*merged_model'."""
    if not select:
        return None
    names = [s.strip() for s in select.split(",") if s.strip()]
    selection = names if len(names) > 1 else names[0]
    from pipelines.definitions import ASSETS
    known = [key.to_user_string() for asset in ASSETS for key in asset.keys]
    for name in names:  # a plain name that is no asset: one line with the nearest names, not Dagster's message
        bare = name.strip("*+")
        if bare.isidentifier() and bare not in known:
            raise TunelineError(f"--select {select!r}: no asset named {bare!r}" + did_you_mean(bare, known))
    try:
        dg.AssetSelection.from_coercible(selection).resolve(ASSETS)
    except Exception as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise TunelineError(f"--select {select!r}: {first} (expected asset names separated by commas, or a Dagster "
                            "selection such as '*merged_model' for an asset and everything upstream)") from None
    return selection


def did_you_mean(name: str, known: list[str]) -> str:
    """"; did you mean 'sft_adapter'?" for the nearest asset names (difflib), else the list of them."""
    import difflib
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return "; did you mean " + " or ".join(repr(n) for n in near) + "?"
    return f" (expected one of: {', '.join(known)})"


def check_upstream_built(tuneline, selection, dg) -> None:
    """A selection whose upstream was never built for this recipe stops before any work, saying what to add."""
    if selection is None:
        return
    from engine.build import NotBuilt
    from pipelines.definitions import ASSETS
    selected = {key.to_user_string() for key in dg.AssetSelection.from_coercible(selection).resolve(ASSETS)}
    plan, store = tuneline.plan(), tuneline.home().store()
    for name in (n for n in plan if n in selected):  # graph order: the same message every time
        for parent, fingerprint in plan[name].parents.items():
            if parent not in selected and store.lookup(parent, fingerprint) is None:
                raise NotBuilt(f"--select {','.join(sorted(selected))}: {name} needs {parent} {fingerprint}, which is "
                               f"not built for this recipe; select '*{name}' to build it and everything upstream")


def set_aside_to_rebuild(tuneline, rebuild: str | None, selection, dg) -> None:
    """`--rebuild ASSET[,ASSET]`: the named assets' artifacts under this recipe's plan are moved aside (kept as
    `<asset>/.damaged-<fp>-<time>/`, removed by the start-of-run cleanup days later), so that this run builds them
    again; downstream reuses its artifacts when the rebuilt one has the same fingerprint."""
    if not rebuild:
        return
    from engine.build import set_aside
    from pipelines.definitions import ASSETS
    plan = tuneline.plan()
    selected = set(plan) if selection is None else {
        key.to_user_string() for key in dg.AssetSelection.from_coercible(selection).resolve(ASSETS)}
    for name in [n.strip() for n in rebuild.split(",") if n.strip()]:
        if name not in plan:
            raise TunelineError(f"--rebuild {name}: not an asset (expected asset names separated by commas: "
                                f"{', '.join(plan)})")
        if name not in selected:
            raise TunelineError(f"--rebuild {name}: not in --select {','.join(sorted(selected))} (select it too)")
        fingerprint = plan[name].fingerprint
        aside = set_aside(tuneline.home(), name, fingerprint)
        print(f"tuneline: {name} {fingerprint}: " + (f"moved aside to {aside}; building it again" if aside else
                                                     "not built yet; building it"), file=sys.stderr)
