"""Work over batches on every core, in order: the one process pool the data stages share (clean_data's row-local
steps, formatted_data's tokenization). Results come back in the order of the jobs, so what a stage writes is the same
for one process or many."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

POOL_MIN_ROWS = 20_000  # fewer rows: a spawned worker's start-up (imports, a tokenizer) costs more than it saves
QUIET = ("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread a process: the processes already use every core
_UNSET = object()

_worker_state: Any = None  # a spawned worker's state, read from its pool's file as it starts
_here = threading.local()  # the state of the job this process (this thread) is running, set around the call
_quiet = {"pools": 0, "saved": None, "lock": threading.Lock()}  # open multi-process pools; the env var before them


def _one_tokenizer_thread(on: bool) -> None:
    """TOKENIZERS_PARALLELISM=false in this process while any of its multi-process pools is open (it runs their jobs
    beside the workers), as it was before once the last one closes, in whatever order they close."""
    with _quiet["lock"]:
        if on:
            if _quiet["pools"] == 0:
                _quiet["saved"] = os.environ.get(QUIET[0])
                os.environ[QUIET[0]] = QUIET[1]
            _quiet["pools"] += 1
            return
        _quiet["pools"] -= 1
        if _quiet["pools"] == 0:
            if _quiet["saved"] is None:
                os.environ.pop(QUIET[0], None)
            else:
                os.environ[QUIET[0]] = _quiet["saved"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0))


def worker_count(setting: int | None, rows: int) -> int:
    """data.preprocessing_num_workers, or where unset every core this process may use for POOL_MIN_ROWS rows or
    more, and one process below."""
    if setting is not None:
        return setting
    return usable_cores() if rows >= POOL_MIN_ROWS else 1


def pool_state() -> Any:
    """What every job of the pool it runs on reads (a stage's tokenizer, its token counter): sent to each process
    once, not with every job."""
    return getattr(_here, "state", _worker_state)


def ordered_map(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int, state: Any = None) -> Iterator[Any]:
    """fn(*job) for every job, in the jobs' order, on an OrderedPool of `workers` processes sharing `state`."""
    with OrderedPool(workers, state) as pool:
        yield from pool.map(fn, jobs)


class OrderedPool:
    """Jobs on `workers` processes: this one and `workers - 1` spawned ones (a tokenizer's threads do not survive a
    fork), kept for several maps (a stage's passes) so the workers start once. This process takes every job until
    the spawned workers have started (a worker's imports and state take seconds), and then each job that finds them
    with two jobs queued each, so no core waits. At most 2 x workers + 2 results are held, so a stream of batches is
    never all in memory."""

    alternate = False  # tests set it: workers waited for, then jobs alternate (by index) between here and them
    START_TIMEOUT = 600

    def __init__(self, workers: int, state: Any = None):
        self.workers, self.state, self.pool, self.setup, self.quiet = workers, state, None, None, False

    def __enter__(self) -> "OrderedPool":
        if self.workers <= 1:
            return self
        try:
            _one_tokenizer_thread(True)
            self.quiet = True
            self.started = multiprocessing.get_context("spawn").Value("i", 0)
            # the state (a tokenizer: a MB) reaches the workers through a file: written down a spawned child's
            # start-up pipe, it would hold this process (and every later worker's start) until that child had
            # imported the main module and read it
            with tempfile.NamedTemporaryFile(prefix="tuneline-pool-", suffix=".pickle", delete=False) as setup:
                self.setup = Path(setup.name)
                pickle.dump(self.state, setup)
            self.pool = ProcessPoolExecutor(self.workers - 1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start, initargs=(str(self.setup), self.started))
            self.probes = [self.pool.submit(_started) for _ in range(self.workers - 1)]  # each spawns one now
            if self.alternate:
                self.wait_for_workers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        while self.running() < self.workers - 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"data pool: {self.workers - 1} workers not started in {self.START_TIMEOUT} s")
            time.sleep(0.02)

    def running(self) -> int:
        """The spawned workers that have started; once all have, their start-up file goes. A worker that failed to
        start is raised here, not left for this process to make up for in silence."""
        for probe in self.probes:
            if probe.done() and probe.exception() is not None:
                raise probe.exception()
        count = self.started.value
        if count == self.workers - 1 and self.setup is not None:
            self.setup.unlink(missing_ok=True)
            self.setup = None
        return count

    def __exit__(self, *exc) -> None:
        try:
            if self.pool is not None:
                try:
                    if (exc and exc[0] is not None) or self.started.value < self.workers - 1:
                        self.stop_workers()
                finally:
                    self.pool.shutdown(cancel_futures=True)
        finally:
            if self.setup is not None:
                self.setup.unlink(missing_ok=True)
            if self.quiet:
                self.quiet = False
                _one_tokenizer_thread(False)

    def stop_workers(self, grace: float = 5.0) -> None:
        """The workers stopped, not waited for: a stage that failed needs no more results, and a worker stuck in its
        start-up would hold shutdown() forever (its start-up probe cannot be cancelled once queued). SIGTERM, then
        SIGKILL after `grace` seconds (a process in uninterruptible I/O outlives even that: nothing here can help)."""
        processes = list((self.pool._processes or {}).values())  # 3.11's executor has no terminate_workers (3.14)
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(grace)
        # a worker killed halfway through sending a result leaves the executor's reader waiting for the rest, which
        # ends (EOF: a broken pool) only once this process's write end is closed too; this process never writes it
        if self.pool._result_queue is not None:
            self.pool._result_queue._writer.close()

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple]) -> Iterator[Any]:
        if self.pool is None:
            yield from (run_here(fn, job, self.state) for job in jobs)
            return
        pending: deque = deque()  # futures and jobs run here, in the jobs' order
        for index, job in enumerate(jobs):
            while pending and pending[0].done():
                yield pending.popleft().result()
            if self.alternate:
                to_worker = index % self.workers != 0
            else:
                to_worker = sum(not p.done() for p in pending) < 2 * self.running()
            pending.append(self.pool.submit(fn, *job) if to_worker else RanHere(fn, job, self.state))
            while len(pending) > 2 * self.workers + 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def run_here(fn: Callable[..., Any], job: tuple, state: Any) -> Any:
    """fn(*job) in this process with `state` as pool_state(), as it was afterwards: pools opened and closed in any
    order do not mix their states."""
    previous = getattr(_here, "state", _UNSET)
    _here.state = state
    try:
        return fn(*job)
    finally:
        if previous is _UNSET:
            del _here.state
        else:
            _here.state = previous


class RanHere:
    """A job run in this process, answering as a finished future does: its error is raised when its turn comes, as
    a worker's would be."""

    def __init__(self, fn: Callable[..., Any], job: tuple, state: Any):
        try:
            self.value, self.error = run_here(fn, job, state), None
        except Exception as error:
            self.value, self.error = None, error

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def _started() -> None:
    """Each spawned worker's first submission: it makes the executor start one more process now."""


def _start(setup: str, started) -> None:
    global _worker_state
    os.environ[QUIET[0]] = QUIET[1]
    _worker_state = pickle.loads(Path(setup).read_bytes())
    with started.get_lock():
        started.value += 1
