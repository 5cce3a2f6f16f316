"""Processes a test starts end with the test, whatever happens: bounded waits, escalating signals, no raise."""

from __future__ import annotations

import queue
import subprocess
import threading
from typing import IO

from engine.runtime.processes import stop_process_group

__all__ = ["readline", "stop_process_group"]


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
