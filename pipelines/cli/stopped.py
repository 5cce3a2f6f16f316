"""A run stopped by Ctrl-C (SIGINT) or SIGTERM ends with one line naming where it stopped and exit code 130; no
traceback, from this process or from Dagster's helper processes."""

from __future__ import annotations

import signal
import subprocess
import sys

from engine.runtime import progress

STOPPED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C; SIGTERM ends the same way (it is handled as Ctrl-C)
INTERRUPTIONS = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}


def stop_on_sigterm() -> None:
    """SIGTERM is Ctrl-C: the same KeyboardInterrupt, the same clean stop (training saves a checkpoint first)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def keep_ctrl_c_from_dagster_helpers() -> None:
    """Dagster mirrors a step's output through a `tail` process and an orphan watcher (a Python script) it starts in
    our process group, so Ctrl-C reaches them too: the watcher dies with a KeyboardInterrupt traceback, tail with
    the last lines unmirrored. They get a session of their own instead (each still stops when Dagster stops it,
    or when this process dies); no Dagster option does it."""
    from dagster._core.execution import compute_logs
    if getattr(compute_logs.subprocess, "tuneline_own_session", False):
        return

    class OwnSession:
        """compute_logs' `subprocess` module, whose Popen starts each helper in a session of its own."""
        tuneline_own_session = True

        def __getattr__(self, name):
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args, **kwargs):  # noqa: N802 (subprocess's name)
            return subprocess.Popen(*args, **{**kwargs, "start_new_session": True})
    compute_logs.subprocess = OwnSession()


def stopped_line(asset: str | None) -> str:
    """"tuneline: stopped during sft_adapter at step 12/40; run the same command to resume"."""
    part = progress.where(asset) if asset else None
    during = f" during {asset}" + (f" at {part}" if part else "") if asset else ""
    return f"tuneline: stopped{during}; run the same command to resume"


def interrupted_step(result) -> str | None:
    """The step a Ctrl-C or SIGTERM stopped, None when nothing was stopped."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            if error.cls_name in INTERRUPTIONS:
                return event.step_key
            error = error.cause
    return None


def say_stopped(asset: str | None) -> int:
    print(stopped_line(asset), file=sys.stderr)
    return STOPPED
