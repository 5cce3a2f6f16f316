"""One way to make an asset: from a stage declaration, its checks and its metadata.

The asset's Dagster edges are the stage's parents, its code_version the import closure of its entry point,
its DataVersion the fingerprint. Its body builds (or reuses) the artifact its run's plan names, records it
in the catalog, evaluates the checks with the recipe's thresholds and returns the metadata.
"""


from typing import Any, Callable

import dagster as dg

from assets.resource import Tuneline
from engine.artifacts import Artifact
from engine.build import build_stage
from engine.codeversion import code_version
from engine.recipe import Recipe
from engine.stage import Stage

Check = Callable[[Artifact, Recipe], tuple[bool, str]]  # (passed, detail naming the number and its bound)
Metadata = Callable[[Artifact, Recipe], dict[str, Any]]

DECLARED: dict[str, Stage] = {}  # every stage an asset was made from: what plans are computed over

# a transient failure (a preempted node, a CUDA hiccup) is retried; upstream artifacts are cached, so only this stage redoes
TRAINING_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def stage_asset(stage: Stage, *, group: str, description: str, summary: Callable[[Artifact, Recipe], str],
                metadata: Metadata | None = None, checks: dict[str, Check] | None = None,
                training: bool = False) -> dg.AssetsDefinition:
    """The Dagster asset of `stage`. Its checks block everything downstream when they fail."""
    checks = checks or {}

    @dg.asset(name=stage.name, deps=list(stage.parents), group_name=group, description=description,
              code_version=code_version(stage.entry),
              check_specs=[dg.AssetCheckSpec(name, asset=stage.name, blocking=True) for name in checks],
              pool="training" if training else None, retry_policy=TRAINING_RETRY if training else None)
    def _asset(context: dg.AssetExecutionContext, tuneline: Tuneline) -> dg.MaterializeResult:
        recipe, home = tuneline.recipe(), tuneline.home()
        artifact = build_stage(home, tuneline.plan(context.run_id), stage.name, recipe, log=context.log.warning)
        catalog = home.catalog()
        results = []
        for name, check in checks.items():
            passed, detail = check(artifact, recipe)
            catalog.record_check(artifact.fingerprint, name, passed, detail)
            results.append(dg.AssetCheckResult(check_name=name, passed=passed, metadata={"detail": detail},
                                               severity=dg.AssetCheckSeverity.ERROR))
        return dg.MaterializeResult(
            metadata={"summary": summary(artifact, recipe), "path": dg.MetadataValue.path(str(artifact.path)),
                      "fingerprint": artifact.fingerprint, "cache_hit": artifact.cache_hit,
                      **(metadata(artifact, recipe) if metadata else {})},
            data_version=dg.DataVersion(artifact.fingerprint), check_results=results)

    DECLARED[stage.name] = stage
    return _asset


def counts_table(counts: dict[str, Any], key: str = "reason", value: str = "rows") -> dg.MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    return dg.MetadataValue.md(f"| {key} | {value} |\n|---|---|\n{rows}")


def loss_table(curve: list[dict]) -> dg.MetadataValue:
    rows = "\n".join(f"| {point['step']} | {point['loss']} |" for point in curve)
    return dg.MetadataValue.md(f"| step | loss |\n|---|---|\n{rows}")


def tracking_metadata(artifact: Artifact, report_to: str) -> dict[str, str]:
    """The command that shows a stage's run in its tracker, when the recipe asked for one."""
    from engine.train.common import TENSORBOARD_DIR, mlflow_uri
    if report_to == "tensorboard":
        return {"tracking": f"tensorboard --logdir {artifact.path / TENSORBOARD_DIR}"}
    if report_to == "mlflow":
        return {"tracking": f"mlflow ui --backend-store-uri {mlflow_uri(artifact.path)}"}
    return {}
