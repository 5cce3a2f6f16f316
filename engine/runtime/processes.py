"""Stopping a child process and everything it started, in bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import time

ESCALATION = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: the id now belongs to another user's group
        return False
    return True


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> signal.Signals | None:
    """SIGINT to the process group of `process` (a child started with start_new_session=True), then SIGTERM, then
    SIGKILL, each after `grace` seconds in which the group did not end. Returns the signal that ended it (None: it
    had already ended). Never raises and never waits without bound, so it is safe in a `finally` or a teardown.
    A child that shares our process group is signalled alone."""
    try:
        own_group = os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        own_group = True  # the leader is gone (or a zombie we have not reaped): its group may still hold children

    def ended() -> bool:
        process.poll()  # reaps the leader: an unreaped zombie would keep its group alive
        return process.returncode is not None and not (own_group and group_alive(process.pid))

    if ended():
        return None
    for sig in ESCALATION:
        try:
            os.killpg(process.pid, sig) if own_group else process.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + (grace if sig != signal.SIGKILL else 5.0)
        while time.monotonic() < deadline:
            if ended():
                return sig
            time.sleep(0.05)
    return signal.SIGKILL
