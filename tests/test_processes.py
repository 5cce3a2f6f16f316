"""stop_process_group: SIGINT, then SIGTERM, then SIGKILL to a child's whole process group, each wait bounded."""

import os
import signal
import subprocess
import sys
import time

from tests.processes import readline, stop_process_group

IGNORE = "import signal\n" + "".join(f"signal.signal(signal.{s}, signal.SIG_IGN)\n" for s in ("SIGINT", "SIGTERM"))


# the child's own dispositions, whatever its launcher left ignored (a background job of a non-interactive shell
# inherits SIGINT ignored, and Python then keeps it ignored)
DEFAULTS = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" \
           "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"


def start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DEFAULTS + code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie runs nothing
    except FileNotFoundError:
        return True


def test_a_child_that_stops_on_sigint_gets_nothing_harder():
    process = start("import time\nprint('ready', flush=True)\ntime.sleep(60)")
    try:
        assert readline(process.stdout, 30) == "ready\n"
        assert stop_process_group(process, grace=5) == signal.SIGINT and process.returncode == -signal.SIGINT
    finally:
        stop_process_group(process, grace=1)


def test_sigint_ignored_then_sigterm():
    process = start("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                    "print('ready', flush=True)\ntime.sleep(60)")
    try:
        assert readline(process.stdout, 30) == "ready\n"
        assert stop_process_group(process, grace=0.5) == signal.SIGTERM and process.returncode == -signal.SIGTERM
    finally:
        stop_process_group(process, grace=1)


def test_both_ignored_the_whole_group_is_killed_grandchildren_too():
    grandchild = IGNORE + "import time\ntime.sleep(60)"
    code = IGNORE + (f"import subprocess, sys, time\nchild = subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
                     "print(child.pid, flush=True)\ntime.sleep(60)")
    process = start(code)
    try:
        grandchild_pid = int(readline(process.stdout, 30))
        started = time.monotonic()
        assert stop_process_group(process, grace=0.5) == signal.SIGKILL
        assert time.monotonic() - started < 0.5 * 2 + 5 + 1  # two graces and the SIGKILL wait, bounded
        assert process.returncode == -signal.SIGKILL and gone(grandchild_pid)
    finally:
        stop_process_group(process, grace=1)


def test_an_ended_child_is_left_alone_and_nothing_raises():
    process = start("pass")
    process.wait(30)
    assert stop_process_group(process, grace=0.1) is None
    assert stop_process_group(process, grace=0.1) is None


def test_a_child_in_our_own_group_is_signalled_alone():
    process = subprocess.Popen([sys.executable, "-c", DEFAULTS + "import time\nprint('ready', flush=True)\n"
                                "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert os.getpgid(process.pid) == os.getpgid(0)
        assert readline(process.stdout, 30) == "ready\n"
        assert stop_process_group(process, grace=5) == signal.SIGINT  # and this test's process is still here
    finally:
        stop_process_group(process, grace=1)


def test_readline_gives_up_on_a_silent_child():
    process = start("import time\ntime.sleep(60)")
    try:
        started = time.monotonic()
        assert readline(process.stdout, 0.5) == "" and time.monotonic() - started < 5
    finally:
        stop_process_group(process, grace=1)
