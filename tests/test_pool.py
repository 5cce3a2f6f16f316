"""The data stages' pool (engine/runtime/pool.py): this process and spawned workers share the jobs, results come back
in the jobs' order with the pool's state, an error is raised in its job's turn, and the process is left as it was."""

import os

import pytest

from engine.runtime.pool import OrderedPool, ordered_map, pool_state


def scaled(x: int) -> int:  # module level: a spawned worker imports it
    return x * pool_state()


def where(_: int) -> int:
    return os.getpid()


def fails_on_3_and_7(x: int) -> int:
    if x in (3, 7):
        raise ValueError(f"job {x}")
    return x


@pytest.mark.parametrize("wait", [True, False])
def test_results_come_in_the_jobs_order_with_the_pools_state_on_any_number_of_processes(wait, monkeypatch):
    monkeypatch.setattr(OrderedPool, "wait_for_workers", wait)  # False: as a stage runs, this process starts alone
    jobs = [(i,) for i in range(40)]
    for workers in (1, 2, 3):
        assert list(ordered_map(scaled, jobs, workers, state=3)) == [3 * i for i in range(40)]
    assert pool_state() is None


def test_started_workers_take_jobs_and_the_process_is_left_as_it_was(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    with OrderedPool(2, state="settings") as pool:
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # this process is one of the workers: one thread
        assert pool_state() == "settings"
        for started in pool.started:
            started.result(timeout=300)
        pids = list(pool.map(where, [(i,) for i in range(6)]))  # a started worker gets the first two jobs queued
        setup = pool.setup
    assert os.getpid() not in pids[:2]
    assert "TOKENIZERS_PARALLELISM" not in os.environ and pool_state() is None and not setup.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_raises_in_its_turn_as_in_one_process(workers):
    seen = []
    with pytest.raises(ValueError, match="job 3"):
        for x in ordered_map(fails_on_3_and_7, [(i,) for i in range(30)], workers):
            seen.append(x)
    assert seen == [0, 1, 2]
    assert pool_state() is None
