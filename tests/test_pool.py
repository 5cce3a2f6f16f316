"""The data stages' pool (engine/runtime/pool.py): this process and spawned workers share the jobs, results come back
in the jobs' order with the pool's state, an error is raised in its job's turn, and the process is left as it was,
a pool that fails to open too."""

import os
import sys
import tempfile
import time
from pathlib import Path
from concurrent.futures.process import BrokenProcessPool

import pytest

from tests import processes

from engine.runtime.pool import OrderedPool, ordered_map, pool_state


def scaled(x: int) -> int:  # module level: a spawned worker imports it
    return x * pool_state()


def placed(_: int) -> tuple[int, str | None, object]:
    return os.getpid(), os.environ.get("TOKENIZERS_PARALLELISM"), pool_state()


def fails_on(x: int, failing: tuple[int, ...]) -> int:
    if x in failing:
        raise ValueError(f"job {x}")
    return x


def refuse():
    raise RuntimeError("this state does not unpickle")


class Stuck:
    """A state whose unpickling never ends: a worker stuck in its start-up."""

    def __reduce__(self):
        return time.sleep, (3600,)


class Unshippable:
    """A state this process pickles and no worker can unpickle."""

    def __reduce__(self):
        return refuse, ()


@pytest.mark.parametrize("alternate", [True, False])
def test_results_come_in_the_jobs_order_with_the_pools_state_on_any_number_of_processes(alternate, monkeypatch):
    monkeypatch.setattr(OrderedPool, "alternate", alternate)  # False: as a stage runs, this process starts alone
    jobs = [(i,) for i in range(40)]
    for workers in (1, 2, 3):
        assert list(ordered_map(scaled, jobs, workers, state=3)) == [3 * i for i in range(40)]
    assert pool_state() is None


def test_jobs_run_here_and_on_workers_with_one_tokenizer_thread_and_the_process_is_left_as_it_was(monkeypatch,
                                                                                                      tmp_path):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the pool's start-up file goes
    with OrderedPool(3, state="settings") as pool:
        ran = list(pool.map(placed, [(i,) for i in range(9)]))
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false" and pool_state() is None  # the state: around a job
    here = [i for i, (pid, _, _) in enumerate(ran) if pid == os.getpid()]
    assert here == [0, 3, 6]  # the tests' placement: by index, the others on the workers
    assert all(threads == "false" and state == "settings" for _, threads, state in ran)
    assert "TOKENIZERS_PARALLELISM" not in os.environ and pool_state() is None and not list(tmp_path.iterdir())


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("failing", "first"), [((3, 4), "job 3"), ((4, 5), "job 4")])
def test_a_failing_job_raises_in_its_turn_as_in_one_process(workers, failing, first):
    """On 2 processes, job 3 fails on the worker and job 4 here: whichever fails first in job order is raised, once
    the jobs before it have come back."""
    seen = []
    with pytest.raises(ValueError, match=first):
        for x in ordered_map(fails_on, [(i, failing) for i in range(30)], workers):
            seen.append(x)
    assert seen == list(range(int(first[-1])))
    assert pool_state() is None


def test_pools_closed_in_any_order_keep_their_own_state():
    first, second = ordered_map(scaled, [(i,) for i in range(20)], 2, state=2), \
        ordered_map(scaled, [(i,) for i in range(20)], 2, state=5)
    got = [(next(first), next(second)) for _ in range(5)]
    first.close()  # the first pool closes while the second is open
    assert got == [(2 * i, 5 * i) for i in range(5)] and list(second) == [5 * i for i in range(5, 20)]
    assert pool_state() is None


def test_a_pool_that_cannot_open_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(Exception, match="pickle"):
        with OrderedPool(2, state=lambda: None):  # a state no worker could receive
            pass
    assert not list(tmp_path.iterdir()) and pool_state() is None and "TOKENIZERS_PARALLELISM" not in os.environ


def test_a_worker_that_cannot_start_fails_the_stage_instead_of_leaving_it_to_one_process(monkeypatch, tmp_path):
    monkeypatch.setattr(OrderedPool, "alternate", False)  # as a stage runs: this process takes jobs meanwhile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    deadline = time.monotonic() + 120

    def jobs():
        while time.monotonic() < deadline:
            yield (-1,)
    with pytest.raises(BrokenProcessPool):
        with OrderedPool(2, state=Unshippable()) as pool:
            for _ in pool.map(abs, jobs()):
                pass
    assert not list(tmp_path.iterdir()) and pool_state() is None


def sleeps_on_one(x: int) -> int:
    if x == 1:
        time.sleep(3600)
    return x


BUSY = """
import sys
import time
from tests.test_pool import sleeps_on_one
from engine.runtime.pool import OrderedPool
OrderedPool.alternate = True  # workers waited for; job 1 goes to the worker, 0 and 2 run here


def jobs():
    yield (0,)
    yield (1,)
    raise ValueError("the input failed")


began = time.monotonic()
try:
    with OrderedPool(2) as pool:
        for _ in pool.map(sleeps_on_one, jobs()):
            pass
except ValueError as error:
    print(error)
print(f"closed in {time.monotonic() - began:.1f} s", flush=True)
"""


def outcome_and_seconds(script: str, *args: str) -> tuple[str, float]:
    """Runs `script` in its own process group (stopped with escalation past 120 s): the first line it printed (its
    pool's result or error) and the seconds it took its pool to close ("closed in N s")."""
    done = processes.run([sys.executable, "-c", script, *args], timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    outcome, closed = done.stdout.decode().splitlines()[:2]
    return outcome, float(closed.split()[2])


def test_a_stage_that_fails_does_not_wait_for_its_workers_jobs():
    """The stage's input fails while a worker runs a long job: the pool closes with the error at once (the worker
    stopped); it used to wait for the job to end."""
    outcome, seconds = outcome_and_seconds(BUSY)
    assert outcome == "the input failed" and seconds < 60


STUCK = """
import time
import sys
from tests.test_pool import Stuck, fails_on
from engine.runtime.pool import OrderedPool
OrderedPool.alternate = False
failing = sys.argv[1] == "failing"
began = time.monotonic()
try:
    with OrderedPool(2, state=Stuck()) as pool:
        print(sum(pool.map(fails_on, [(x, (7,) if failing else ()) for x in range(10)])))
except ValueError as error:
    print(error)
print(f"closed in {time.monotonic() - began:.1f} s", flush=True)
"""


@pytest.mark.parametrize("failing", [False, True])
def test_a_worker_stuck_in_its_start_up_does_not_hold_the_stage(failing):
    """Every job ran here (the worker never started): the pool closes at once, the stage's result or error out, the
    stuck worker stopped; it used to wait for the worker forever."""
    outcome, seconds = outcome_and_seconds(STUCK, "failing" if failing else "ok")
    assert outcome == ("job 7" if failing else "45") and seconds < 30
