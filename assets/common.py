"""What every asset does around its engine call: build-or-reuse, metadata, check results."""

from __future__ import annotations

from typing import Any, Iterator

import dagster as dg

from engine.artifacts import Artifact
from pipelines.resources import Tuneline


# a transient failure (a preempted node, a CUDA hiccup) is retried; upstream artifacts are cached, so only this stage redoes
TRAINING_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def blocking_checks(asset: str, *names: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True) for name in names]


def emit(tuneline: Tuneline, artifact: Artifact, summary: str, metadata: dict[str, Any],
         checks: dict[str, tuple[bool, str]]) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The artifact as Dagster output (DataVersion = fingerprint), then each check's result, recorded in the catalog."""
    yield dg.Output(artifact, data_version=dg.DataVersion(artifact.fingerprint), metadata={
        "summary": summary, "path": dg.MetadataValue.path(str(artifact.path)),
        "fingerprint": artifact.fingerprint, "cache_hit": artifact.cache_hit, **metadata})
    catalog = tuneline.catalog()
    for name, (passed, detail) in checks.items():
        catalog.record_check(artifact.fingerprint, name, passed, detail)
        yield dg.AssetCheckResult(check_name=name, passed=passed, metadata={"detail": detail},
                                  severity=dg.AssetCheckSeverity.ERROR)


def loss_table(curve: list[dict]) -> dg.MetadataValue:
    rows = "\n".join(f"| {point['step']} | {point['loss']} |" for point in curve)
    return dg.MetadataValue.md(f"| step | loss |\n|---|---|\n{rows}")


def counts_table(counts: dict[str, Any], key: str = "reason", value: str = "rows") -> dg.MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    return dg.MetadataValue.md(f"| {key} | {value} |\n|---|---|\n{rows}")


def passed(checks: dict[str, tuple[bool, str]]) -> dict[str, bool]:
    return {name: ok for name, (ok, _) in checks.items()}


def tracking_metadata(artifact: Artifact, report_to: str) -> dict[str, str]:
    """The command that shows a stage's run in its tracker, when the recipe asked for one."""
    from engine.train.common import TENSORBOARD_DIR, mlflow_uri
    if report_to == "tensorboard":
        return {"tracking": f"tensorboard --logdir {artifact.path / TENSORBOARD_DIR}"}
    if report_to == "mlflow":
        return {"tracking": f"mlflow ui --backend-store-uri {mlflow_uri(artifact.path)}"}
    return {}
