"""Processes a test starts end with the test, whatever happens: bounded waits, escalating signals, no raise."""

from __future__ import annotations

import contextlib
import itertools
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from engine.runtime.processes import stop_process_group

__all__ = ["Child", "readline", "started", "stop_process_group"]


def readline(stream: IO[str], timeout: float) -> str:
    """The next line of a child's output, or "" if none came within `timeout` seconds (the child may hang)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def wait(process: subprocess.Popen, timeout: float) -> int | None:
    """The child's exit code, or None if it still runs after `timeout` seconds."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: on timeout the whole group (a browser's helpers too) is stopped,
    then TimeoutExpired is raised as subprocess.run raises it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop_process_group(process, grace=5)  # the leader may be gone while its helpers still run
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@dataclass
class Child:
    """A child whose stdout and stderr go to files, so it never blocks on a full pipe while a test polls."""
    process: subprocess.Popen
    out_path: Path
    err_path: Path

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int | None:
        return wait(self.process, timeout)

    def wait_until(self, probe: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
        """probe()'s value once it is truthy; fails at once if the child exits first, and after `timeout` seconds
        naming `what` it waited for (with the tail of the child's output)."""
        deadline = time.monotonic() + timeout
        while True:
            if value := probe():
                return value
            if self.process.poll() is not None:
                raise AssertionError(f"the child exited with {self.process.returncode} before {what}:\n"
                                     f"{(self.out() + self.err())[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}:\n{(self.out() + self.err())[-3000:]}")
            time.sleep(interval)

    def wait_for_output(self, text: str, timeout: float, what: str) -> str:
        """The child's stdout and stderr once `text` is in them (see wait_until)."""
        return self.wait_until(lambda: text in (seen := self.out() + self.err()) and seen, timeout, what)


_names = itertools.count()


def start(command: list[str], logs: Path, **popen) -> Child:
    """`command` in a session of its own (stop_process_group reaches its helpers), its output under `logs`."""
    logs.mkdir(parents=True, exist_ok=True)
    n = next(_names)
    out_path, err_path = logs / f"child-{n}.out", logs / f"child-{n}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                   start_new_session=True, **popen)
    return Child(process, out_path, err_path)


@contextlib.contextmanager
def started(command: list[str], logs: Path, grace: float = 10, **popen) -> Iterator[Child]:
    """start(); on leaving, whatever happened, the child's group is stopped: SIGINT, SIGTERM, then SIGKILL."""
    child = start(command, logs, **popen)
    try:
        yield child
    finally:
        stop_process_group(child.process, grace)
