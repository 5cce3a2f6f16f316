"""Work over batches on every core, in order: the one process pool the data stages share (clean_data's row-local
steps, formatted_data's tokenization). Results come back in the order of the jobs, so what a stage writes is the same
for one process or many."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

POOL_MIN_ROWS = 20_000  # fewer rows: a spawned worker's start-up (imports, a tokenizer) costs more than it saves


def worker_count(setting: int | None, rows: int) -> int:
    """data.preprocessing_num_workers, or where unset every core this process may use for POOL_MIN_ROWS rows or
    more, and one process below."""
    if setting is not None:
        return setting
    return len(os.sched_getaffinity(0)) if rows >= POOL_MIN_ROWS else 1


def _quiet_tokenizers() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the workers already use every core


def ordered_map(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """fn(*job) for every job, in the jobs' order: in this process with one worker, else on a pool of `workers`
    spawned processes (a tokenizer's threads do not survive a fork), each started with initializer(*initargs). At
    most 2 x workers jobs are in flight, so a stream of batches is never all in memory."""
    with OrderedPool(workers, initializer, initargs) as pool:
        yield from pool.map(fn, jobs)


class OrderedPool:
    """ordered_map's pool, kept for several maps (a stage's passes), so its workers start once."""

    def __init__(self, workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()):
        self.workers, self.initializer, self.initargs, self.pool = workers, initializer, initargs, None

    def __enter__(self) -> "OrderedPool":
        if self.workers <= 1:
            if self.initializer is not None:
                self.initializer(*self.initargs)
        else:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start, initargs=(self.initializer, self.initargs))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple]) -> Iterator[Any]:
        if self.pool is None:
            yield from (fn(*job) for job in jobs)
            return
        pending = []
        for job in jobs:
            pending.append(self.pool.submit(fn, *job))
            if len(pending) >= 2 * self.workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _start(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    _quiet_tokenizers()
    if initializer is not None:
        initializer(*initargs)
