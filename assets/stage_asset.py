"""One way to make an asset: from a stage declaration, its checks and its metadata.

The asset's Dagster edges are the stage's parents, its code_version the import closure of its entry point,
its DataVersion the fingerprint. Its body builds (or reuses) the artifact its run's plan names, records it
in the catalog, evaluates the checks with the recipe's thresholds and returns the metadata.
"""

import math
import shutil
from typing import Any, Callable, ContextManager, Iterator

import dagster as dg

from assets.kubernetes import TRAIN_PROCESS, run_in_pod
from assets.live_points import LivePointsReader
from assets.trainjob import run_trainjob
from assets.resource import Tuneline
from engine.runtime import progress
from engine.store.artifacts import Artifact
from engine.build import FILES_INTACT, build_stage, call_entry
from engine.store.digests import ArtifactDamaged
from engine.store.home import training_pool
from engine.store.codeversion import code_version
from engine.errors import TunelineError
from engine.evaluate.plots import PLOTS_DIR
from engine.evaluate.sketches import stage_sketches
from engine.recipe import Recipe
from engine.models.backends import pod_expectation
from engine.models.device import stage_device
from engine.stage import Stage, StageRun, is_configured
from engine.train.child import read_error, read_result, spec_of, write_spec
from engine.train import multinode
from engine.train.launch import launch_command, training_environment

# (passed, detail naming the number and its bound), or with a third item: more metadata for the check's result;
# passed is NOT_CONFIGURED (None) when what the check judges is off under this recipe
Check = Callable[[Artifact, Recipe], tuple[bool | None, str] | tuple[bool | None, str, dict[str, Any]]]
Metadata = Callable[[Artifact, Recipe], dict[str, Any]]

# asset -> its checks by name, as declared (tests/test_check_faults.py plants each one's fault)
DECLARED_CHECKS: dict[str, dict[str, Check]] = {}
# asset -> checks it declares only on a machine that can run them (loads_in_vllm where vLLM runs): not declared
# here, still proven to fail by tests/test_check_faults.py on every machine
DECLARED_ELSEWHERE: dict[str, dict[str, Check]] = {}

# a check's verdict when what it judges is off under this recipe: not evaluated, which is not passed. The catalog
# records it as passed NULL with the reason, Dagster gets no result for it (the UI shows it as not evaluated), and
# the materialization's CHECKS_NOT_CONFIGURED metadata names it with the reason (`tuneline run` counts them apart)
NOT_CONFIGURED = None
CHECKS_NOT_CONFIGURED = "checks_not_configured"

def out_of_process(context: dg.AssetExecutionContext):
    """Runs a training stage's entry point (or an export or evaluation stage's, in a pod where the recipe says) as
    `python -m pipelines.train_process <stage> --spec spec.json` through Dagster Pipes: its log and progress stream
    into this run's log, its live points become observations of the asset as they come (assets/live_points.py), its
    metrics come back, and terminating the run stops it (SIGINT: it saves a checkpoint first)."""
    def run_entry(stage: Stage, run: StageRun) -> dict:
        live = LivePointsReader(context, dg.AssetKey(stage.name))
        client = dg.PipesSubprocessClient(termination_timeout_seconds=120, message_reader=live)
        launcher = run.recipe.whole_recipe().launcher
        on = stage_device(launcher, stage.kind)
        spec = spec_of(stage.name, run.fingerprint, stage.entry, run.recipe.declared_keys(),
                       run.recipe.whole_recipe(), run.inputs, run.out, run.home.root,
                       device=pod_expectation(on) if on.declared else None)
        path = write_spec(spec, run.home.run_dir(stage.name, run.fingerprint))
        launcher = run.recipe.whole_recipe().launcher
        try:
            if launcher.type == "kubernetes" and launcher.nnodes > 1 and stage.training:  # every node's pod: a TrainJob
                run_trainjob(context, launcher, stage.name, path, run.home.root, run.fingerprint)
            elif launcher.type == "kubernetes":
                run_in_pod(context, launcher, stage.name, path, run.home.root, training=stage.training)
            else:
                env = training_environment()
                if launcher.nnodes > 1:  # node 0 here; the others: its command
                    env |= multinode.node_zero_environment(path)
                    for line in multinode.joining_instructions(launcher, stage.name, path, run.home.root):
                        progress.LOGGER.warning(line)
                with progress.speaks_for_itself():  # its step lines (engine/train/checkpoints.py ProgressLines)
                    client.run(context=context, command=launch_command(launcher, stage.name, path, TRAIN_PROCESS),
                               env=env)
        except Exception as exc:  # the process or pod failed: its own error record says why
            error = read_error(path)
            if error["kind"] == "transient":  # retried after 30 s, resuming from its last checkpoint
                raise dg.RetryRequested(max_retries=2, seconds_to_wait=30) from None
            if unjoined := multinode.rendezvous_failure(launcher, stage.name, path):
                raise TrainingFailed(unjoined) from None
            reason = error["message"] if error["message"] != "no error recorded" else str(exc)
            resumes = " (a rerun resumes from its last complete checkpoint)" if stage.training else ""
            raise TrainingFailed(f"{stage.name}: {reason}{resumes}") from exc
        except BaseException:  # stopped (Ctrl-C, SIGTERM): where the child stopped is where the run stopped
            if stopped_at := read_error(path).get("where"):
                progress.enter(stage.name, stopped_at)
            raise
        metrics = read_result(path)
        if live.recorded:
            context.log.info(f"{stage.name}: {live.recorded} live points recorded as observations of the asset")
        shutil.rmtree(path.parent, ignore_errors=True)
        return metrics
    return run_entry


def inside(session: ContextManager, runner: Callable[[Stage, StageRun], dict]) -> Callable[[Stage, StageRun], dict]:
    """`runner` inside `session`, entered only when the stage runs (a cached artifact needs no Ray)."""
    def run_entry(stage: Stage, run: StageRun) -> dict:
        with session:
            return runner(stage, run)
    return run_entry


class TrainingFailed(TunelineError):
    """A stage process (training, or a pod) exited with an error (its own message is in the run's log)."""


def stage_asset(stage: Stage, *, group: str, description: str, summary: Callable[[Artifact, Recipe], str],
                metadata: Metadata | None = None, checks: dict[str, Check] | None = None,
                elsewhere: dict[str, Check] | None = None,
                session: Callable[[dg.AssetExecutionContext, Recipe], ContextManager] | None = None
                ) -> dg.AssetsDefinition:
    """The Dagster asset of `stage` (declared in engine/graph.py). Its checks block everything downstream when they
    fail, and are not evaluated (no result, not a pass) when the recipe turns the stage, or what a check judges, off;
    `elsewhere`: checks this machine cannot run, not declared here (see DECLARED_ELSEWHERE). A training stage runs
    out of process, one at a time per machine, and only a transient failure (out of memory on a shared GPU, a
    lost connection) is retried; an interrupt or a recipe or data error never is. `session`: what the stage runs
    inside (clean_data's Ray connection, assets/ray_session.py)."""
    DECLARED_ELSEWHERE[stage.name] = elsewhere or {}
    checks = DECLARED_CHECKS[stage.name] = checks or {}
    key = dg.AssetKey(stage.name)

    # a multi_asset of one asset: only there may a step leave a declared check without a result (can_subset makes
    # the check outputs optional), which is how a check of what the recipe turns off shows as not evaluated
    # a training step takes a slot of the GPU class's pool where a team deployment names one (engine/store/home.py)
    @dg.multi_asset(name=stage.name, can_subset=True, pool=training_pool() if stage.training else None,
                    specs=[dg.AssetSpec(key, deps=list(stage.parents), group_name=group, description=description,
                                        code_version=code_version(stage.entry))],
                    check_specs=[dg.AssetCheckSpec(name, asset=key, blocking=True) for name in checks])
    def _asset(context: dg.AssetExecutionContext, tuneline: Tuneline) -> Iterator[dg.MaterializeResult
                                                                                  | dg.AssetCheckResult]:
        recipe, home = tuneline.recipe(), tuneline.home()
        runner = out_of_process(context) if stage.runs_out_of_process(recipe) else call_entry
        runner = inside(session(context, recipe), runner) if session else runner
        try:  # the stage's lines (progress, waits) reach the run's log as well as the CLI (engine/runtime/progress.py)
            with progress.forwarded(context.log.log):
                artifact = build_stage(home, tuneline.plan(context.run.run_id), stage.name, recipe,
                                       log=progress.LOGGER.warning, run_entry=runner)
        except ArtifactDamaged as damaged:
            report_damaged(context, damaged)
            raise
        catalog = home.catalog()
        configured = is_configured(artifact.metrics)
        results, off = [], {}
        for name, check in checks.items():
            if dg.AssetCheckKey(key, name) not in context.selected_asset_check_keys:
                continue
            passed, detail, *more = check(artifact, recipe) if configured else (NOT_CONFIGURED, off_detail(artifact))
            catalog.record_check(artifact.fingerprint, name, passed, detail)
            if passed is NOT_CONFIGURED:  # no result: Dagster shows the check as not evaluated, not as passed
                off[name] = detail
                continue
            results.append(dg.AssetCheckResult(asset_key=key, check_name=name, passed=passed,
                                               metadata={"detail": detail, **(more[0] if more else {})},
                                               severity=dg.AssetCheckSeverity.ERROR))
        if key not in context.selected_asset_keys:  # its checks alone were asked for (the UI's "Execute checks")
            yield from results
            return
        described = {"summary": summary(artifact, recipe) if configured else off_detail(artifact),
                     "path": dg.MetadataValue.path(str(artifact.path)),
                     "fingerprint": artifact.fingerprint, "cache_hit": artifact.cache_hit,
                     "built_by_run": built_by_run(context, key, artifact),
                     **(metadata(artifact, recipe) if metadata and configured else {}), **pictures(artifact),
                     **({} if configured else {"configured": False, "reason": artifact.metrics["reason"]}),
                     **({CHECKS_NOT_CONFIGURED: dg.MetadataValue.json(off)} if off else {})}
        yield dg.MaterializeResult(asset_key=key, metadata=cached(described) if artifact.cache_hit else described,
                                   data_version=dg.DataVersion(artifact.fingerprint), check_results=results)

    return _asset


def report_damaged(context: dg.AssetExecutionContext, damaged: ArtifactDamaged) -> None:
    """The failed `files_intact` check on the damaged asset (a parent, or this asset's own cache hit), in the
    Dagster instance: reported outside the run, because a step can only yield checks of its own asset."""
    context.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(damaged.asset), check_name=FILES_INTACT, passed=False,
        metadata={"detail": damaged.detail, "fingerprint": damaged.fingerprint, "path": str(damaged.path)},
        severity=dg.AssetCheckSeverity.ERROR))


def off_detail(artifact: Artifact) -> str:
    """What an off stage's summary and (not evaluated) checks say: there is nothing to judge."""
    return f"not configured: {artifact.metrics['reason']}"


def counts_table(counts: dict[str, Any], key: str = "reason", value: str = "rows") -> dg.MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    return dg.MetadataValue.md(f"| {key} | {value} |\n|---|---|\n{rows}")


def pictures(artifact: Artifact) -> dict[str, dg.MetadataValue]:
    """The stage's pictures, shown in place on the asset page (Dagster has no image metadata type; a Markdown value
    under 1,000 characters is rendered inline, engine/evaluate/sketches.py), and the folder of its full-size PNGs."""
    sketches = stage_sketches(artifact.metrics)
    found: dict[str, dg.MetadataValue] = {k: dg.MetadataValue.md(v) for k, v in sketches.items()}
    if (artifact.path / PLOTS_DIR).is_dir():
        found["plots"] = dg.MetadataValue.path(str(artifact.path / PLOTS_DIR))
    return found


def built_by_run(context: dg.AssetExecutionContext, key: dg.AssetKey, artifact: Artifact) -> str:
    """The Dagster run that built this artifact: this one, or for a cache hit the run its latest materialization of
    the same fingerprint names (a cache hit carries it on)."""
    if not artifact.cache_hit:
        return context.run.run_id
    for record in context.instance.fetch_materializations(key, limit=BUILT_BY_LOOKBACK).records:
        meta = record.asset_materialization.metadata if record.asset_materialization else {}
        if "fingerprint" in meta and meta["fingerprint"].value == artifact.fingerprint:
            return meta["built_by_run"].value if "built_by_run" in meta else record.run_id
    return "not in this Dagster instance (built by another, or by `tuneline train`)"


CACHED = "cached: "  # how a cache hit's summary begins (the UI's history); tuneline run's table has a status column
BUILT_BY_LOOKBACK = 200  # materializations of an asset searched for the build of a cache hit's fingerprint


def cached(metadata: dict[str, Any]) -> dict[str, Any]:
    """A cache hit's metadata: what names and shows the build (summary marked cached, path, fingerprint,
    built_by_run, pictures, tables), without its numbers: the Plots tab draws one point per build, not a flat
    repeat per cache hit."""
    kept = {k: v for k, v in metadata.items() if not is_number(v)}
    return {**kept, "summary": CACHED + metadata["summary"]}


def is_number(value: Any) -> bool:
    if isinstance(value, dg.MetadataValue):
        return isinstance(value, (dg.FloatMetadataValue, dg.IntMetadataValue))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def perplexity(eval_loss: float) -> float:
    """exp(eval loss), a number Dagster plots across materializations."""
    return round(math.exp(min(eval_loss, 50.0)), 3)


def tracking_metadata(artifact: Artifact, report_to: str) -> dict[str, str]:
    """The command that shows a stage's run in its tracker, when the recipe asked for one."""
    from engine.train.tracking import TENSORBOARD_DIR, WANDB_DIR, mlflow_uri
    if report_to == "wandb":
        runs = sorted((artifact.path / WANDB_DIR).glob("offline-run-*")) or [artifact.path / WANDB_DIR]
        return {"tracking": f"wandb sync {runs[-1]}"}
    if report_to == "tensorboard":
        return {"tracking": f"tensorboard --logdir {artifact.path / TENSORBOARD_DIR}"}
    if report_to == "mlflow":
        return {"tracking": f"mlflow ui --backend-store-uri {mlflow_uri(artifact.path)}"}
    return {}
