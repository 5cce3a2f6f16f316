"""Work over batches on every core, in order: the one process pool the data stages share (clean_data's row-local
steps, formatted_data's tokenization). Results come back in the order of the jobs, so what a stage writes is the same
for one process or many."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

POOL_MIN_ROWS = 20_000  # fewer rows: a spawned worker's start-up (imports, a tokenizer) costs more than it saves
QUIET = ("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread a process: the processes already use every core

_STATE: Any = None  # the open pool's state, set in this process while it is open and in each worker as it starts


def worker_count(setting: int | None, rows: int) -> int:
    """data.preprocessing_num_workers, or where unset every core this process may use for POOL_MIN_ROWS rows or
    more, and one process below."""
    if setting is not None:
        return setting
    return len(os.sched_getaffinity(0)) if rows >= POOL_MIN_ROWS else 1


def pool_state() -> Any:
    """What every job of the pool it runs on reads (a stage's tokenizer, its token counter): sent to each process
    once, not with every job."""
    return _STATE


def ordered_map(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int, state: Any = None) -> Iterator[Any]:
    """fn(*job) for every job, in the jobs' order, on an OrderedPool of `workers` processes sharing `state`."""
    with OrderedPool(workers, state) as pool:
        yield from pool.map(fn, jobs)


class OrderedPool:
    """Jobs on `workers` processes: this one and `workers - 1` spawned ones (a tokenizer's threads do not survive a
    fork), kept for several maps (a stage's passes) so the workers start once. This process takes every job until the
    spawned workers have started (a spawned worker's imports and state take seconds), and then each job that finds
    them with two jobs queued each, so no core waits. At most 8 x workers results are held, so a stream of batches is
    never all in memory."""

    wait_for_workers = False  # tests set it: the spawned workers then take their share of even a few fast jobs
    START_TIMEOUT = 600

    def __init__(self, workers: int, state: Any = None):
        self.workers, self.state, self.pool = workers, state, None

    def __enter__(self) -> "OrderedPool":
        global _STATE
        self.previous, _STATE = _STATE, self.state
        if self.workers > 1:
            self.threads = os.environ.get(QUIET[0])
            os.environ[QUIET[0]] = QUIET[1]
            # the state (a tokenizer: a MB) reaches the workers through a file: written down a spawned child's
            # start-up pipe, it would hold this process (and every later worker's start) until that child had
            # imported the main module and read it
            with tempfile.NamedTemporaryFile(prefix="tuneline-pool-", suffix=".pickle", delete=False) as setup:
                pickle.dump(self.state, setup)
            self.setup = Path(setup.name)
            self.pool = ProcessPoolExecutor(self.workers - 1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start, initargs=(str(self.setup),))
            self.started = [self.pool.submit(_started) for _ in range(self.workers - 1)]  # each spawns one now
            try:
                for started in self.started if self.wait_for_workers else ():
                    started.result(timeout=self.START_TIMEOUT)
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc) -> None:
        global _STATE
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.setup.unlink(missing_ok=True)
            if self.threads is None:
                os.environ.pop(QUIET[0], None)
            else:
                os.environ[QUIET[0]] = self.threads
        _STATE = self.previous

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple]) -> Iterator[Any]:
        if self.pool is None:
            yield from (fn(*job) for job in jobs)
            return
        pending: deque = deque()  # futures and jobs run here, in the jobs' order
        for job in jobs:
            while pending and pending[0].done():
                yield pending.popleft().result()
            if sum(not p.done() for p in pending) < 2 * sum(f.done() for f in self.started):
                pending.append(self.pool.submit(fn, *job))
            else:
                pending.append(RanHere(fn, job))
            while len(pending) > 8 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class RanHere:
    """A job run in this process, answering as a finished future does: its error is raised when its turn comes, as
    a worker's would be."""

    def __init__(self, fn: Callable[..., Any], job: tuple):
        try:
            self.value, self.error = fn(*job), None
        except Exception as error:
            self.value, self.error = None, error

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def _started() -> None:
    """A worker's first job: done once it has started (until then this process takes every job)."""


def _start(setup: str) -> None:
    global _STATE
    os.environ[QUIET[0]] = QUIET[1]
    _STATE = pickle.loads(Path(setup).read_bytes())
