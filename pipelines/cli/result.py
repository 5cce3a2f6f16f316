"""What a materialization made, for a person: the table of assets, and one line per failed step with the exit code
it earns."""

from __future__ import annotations

import re
import sys

from engine.errors import TunelineError
from pipelines.cli.stopped import interrupted_step, say_stopped


def report(result, seconds: float) -> str:
    """A table of every asset: materialized or cached, its artifact path, key metrics, and its checks; last, the
    checks counted: passed, failed, and not configured (not evaluated: the recipe turns off what they judge)."""
    from assets.stage_asset import CACHED, CHECKS_NOT_CONFIGURED
    checks: dict[str, list[str]] = {}
    evaluations = result.get_asset_check_evaluations()
    for evaluation in evaluations:
        mark = "ok" if evaluation.passed else "FAILED"
        checks.setdefault(evaluation.asset_key.to_user_string(), []).append(f"{evaluation.check_name} {mark}")
    off: dict[str, list[str]] = {}
    lines = [f"{'asset':<16} {'status':<8} {'summary':<{SUMMARY_WIDTH}} checks", "-" * 120]
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        key = event.asset_key.to_user_string()
        if CHECKS_NOT_CONFIGURED in meta:
            off[key] = list(meta[CHECKS_NOT_CONFIGURED].value)
            checks.setdefault(key, []).append(f"{len(off[key])} not configured")
        status = "cached" if meta["cache_hit"].value else "built"
        first, *rest = wrapped(meta["summary"].value.removeprefix(CACHED), SUMMARY_WIDTH)  # the status says it
        lines.append(f"{key:<16} {status:<8} {first:<{SUMMARY_WIDTH}} {', '.join(checks.get(key, []))}".rstrip())
        lines += [f"{'':<16} {'':<8} {more}" for more in rest]
        lines.append(f"{'':<16} {'':<8} {meta['path'].value}")
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    failed = [e.step_key for e in result.get_step_failure_events()]
    lines.append("-" * 120)
    lines.append(f"{len(built)} assets in {seconds:.1f}s" + (f"; FAILED steps: {', '.join(failed)}" if failed else ""))
    lines.append(check_counts([e.passed for e in evaluations], off))
    return "\n".join(lines)


SUMMARY_WIDTH = 58


def wrapped(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken between words only (a word longer than the column
    overflows it rather than being cut)."""
    import textwrap
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def check_counts(verdicts: list[bool], off: dict[str, list[str]]) -> str:
    """"checks: 20 passed, 0 failed, 6 not configured (pt_model: a, b; ...)": a check not evaluated is no pass."""
    named = "; ".join(f"{asset}: {', '.join(names)}" for asset, names in off.items())
    return (f"checks: {sum(verdicts)} passed, {len(verdicts) - sum(verdicts)} failed, "
            f"{sum(len(names) for names in off.values())} not configured" + (f" ({named})" if named else ""))


def outcome(result) -> int:
    """0 when the run succeeded; else one line per failed step on stderr (its own error, not Dagster's
    traceback, which --verbose shows) and 2 when every failure is one a user can fix (recipe, data, a failed
    check), 1 for anything else."""
    if result.success:
        return 0
    if (stopped := interrupted_step(result)) is not None:
        return say_stopped(stopped)
    user_errors, names = True, user_error_names()
    failed_checks = failed_check_details(result)
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error.cause is not None:  # Dagster wraps the stage's own error
            error = error.cause
        user_errors &= error.cls_name in names
        message = " ".join(line.strip() for line in error.message.splitlines() if line.strip()) or error.cls_name
        message = re.sub(rf"^[\w.]*{error.cls_name}: ", "", message)  # the error's own words, not its module path
        if error.cls_name == "DagsterAssetCheckFailedError" and failed_checks.get(event.step_key):
            message = "; ".join(failed_checks[event.step_key])  # Dagster's message names the checks, not why
        print(f"tuneline: {event.step_key}: {message}", file=sys.stderr)
    return 2 if user_errors else 1


def failed_check_details(result) -> dict[str, list[str]]:
    """Per step, each failed check as "check <name> failed: <its detail>" (the numbers and the bound it missed)."""
    found: dict[str, list[str]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            evaluation = event.event_specific_data
            detail = evaluation.metadata.get("detail")
            found.setdefault(event.step_key, []).append(
                f"check {evaluation.check_name} failed: {detail.value if detail else 'no detail recorded'}")
    return found


def user_error_names() -> set[str]:
    """Class names of the errors a user causes and fixes: tuneline's own, and a blocking check that failed."""
    found, pending = set(), [TunelineError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending += cls.__subclasses__()
    return found | {"DagsterAssetCheckFailedError"}
