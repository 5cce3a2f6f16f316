"""What the Dagster instance records of a training stage: live points (observations with numeric metadata) while it
trains, one materialization with its numbers per build, and a cache hit that adds no numbers."""

import dagster as dg
import pytest

from pipelines.definitions import ASSETS, resources

pytestmark = pytest.mark.slow
UP_TO_SFT = [dg.AssetKey(name) for name in ("base_model", "raw_data", "clean_data", "formatted_data", "pt_model",
                                             "sft_adapter")]
STEPS = 6
FAST_SFT = {"sft.max_steps": STEPS, "sft.logging_steps": 1, "sft.num_train_epochs": 1}
SFT = dg.AssetKey("sft_adapter")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sft_adapter and its parents materialized twice in one Dagster instance (the second a cache hit): the
    instance and both runs' ids."""
    root = tmp_path_factory.mktemp("live")
    with dg.instance_for_test() as instance:
        ids = []
        for _ in range(2):
            result = dg.materialize(ASSETS, resources=resources("tiny", str(root / "tuneline"), FAST_SFT),
                                    instance=instance, selection=UP_TO_SFT, raise_on_error=False)
            assert result.success, [(e.step_key, e.event_specific_data) for e in result.all_events if e.is_failure]
            ids.append(result.run_id)
        yield instance, ids


def entries(instance, run_id: str) -> list:
    """The run's event log in the order it was stored."""
    return list(instance.all_logs(run_id))


def test_training_points_are_observations_recorded_while_the_step_runs(runs):
    instance, (first, _) = runs
    log = entries(instance, first)
    kinds = [(e.dagster_event.event_type_value if e.dagster_event else "LOG", e) for e in log]
    points = [e for kind, e in kinds if kind == "ASSET_OBSERVATION"
              and e.dagster_event.asset_key == SFT]
    progress = [i for i, (kind, e) in enumerate(kinds) if kind == "LOG" and "sft: step " in e.user_message
                and "/" in e.user_message]
    (materialized,) = [i for i, (kind, e) in enumerate(kinds) if kind == "ASSET_MATERIALIZATION"
                       and e.dagster_event.asset_key == SFT]
    losses = [p.dagster_event.asset_observation_data.asset_observation.metadata for p in points]
    steps = [m["step"].value for m in losses if "train/loss" in m]
    # at most one point per logging step (fewer when steps come faster than MAX_POINTS_PER_SECOND), the last kept
    assert steps[0] == 1 and steps[-1] == STEPS and steps == sorted(set(steps))
    assert all(isinstance(m["train/loss"].value, float) and m["train/learning_rate"].value > 0
               and m["train/tokens_per_second"].value > 0 for m in losses if "train/loss" in m)
    evals = [m for m in losses if "eval/loss" in m]
    assert [m["step"].value for m in evals] == [0, STEPS]  # the evaluation before training and after it
    assert evals[1]["eval/loss"].value < evals[0]["eval/loss"].value
    # live: the first point is stored before the last progress line, not after the process ended; all of them
    # before the materialization
    first_point = log.index(points[0])
    assert first_point < progress[-1] and log.index(points[-1]) < materialized


def test_a_cache_hit_adds_no_numbers_and_names_the_build(runs):
    instance, (first, second) = runs
    records = instance.fetch_materializations(SFT, limit=10).records
    by_run = {r.run_id: r.asset_materialization.metadata for r in records}
    built, cached = by_run[first], by_run[second]
    assert built["cache_hit"].value is False and built["built_by_run"].value == first
    assert isinstance(built["eval_loss_after"].value, float)
    assert cached["cache_hit"].value is True and cached["built_by_run"].value == first
    assert cached["fingerprint"].value == built["fingerprint"].value
    assert cached["summary"].value == f"cached: {built['summary'].value}"
    numbers = [k for k, v in cached.items() if isinstance(v, (dg.FloatMetadataValue, dg.IntMetadataValue))]
    assert numbers == []
    assert cached["loss_curve"].value == built["loss_curve"].value  # the build's picture stays on the page
    # the cache hit trained nothing: no live points in its run
    assert not [e for e in entries(instance, second) if e.dagster_event
                and e.dagster_event.event_type_value == "ASSET_OBSERVATION"]
