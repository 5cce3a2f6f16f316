"""The Dagster instance a `tuneline` process uses: its home under the artifact root, created once when runs start
together, and the runs left behind by processes that are gone."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

# which process runs a `tuneline run`: a later one marks the run failed if that process is gone
RUN_TAGS = {"tuneline/host": socket.gethostname(), "tuneline/pid": str(os.getpid())}


def dagster_home(root: str) -> Path:
    """The Dagster instance lives under the artifact root unless DAGSTER_HOME says otherwise. Two runs starting at
    once on a new home must not see half a dagster.yaml or create its sqlite schema twice: the config is written
    atomically and the instance is first opened under a lock."""
    import fcntl
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(root) / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".tuneline-init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "dagster.yaml").exists():
            partial = home / f".dagster.yaml.{os.getpid()}"
            shutil.copy(Path(__file__).parents[1] / "dagster.yaml", partial)
            os.replace(partial, home / "dagster.yaml")
        import dagster as dg
        with dg.DagsterInstance.get():  # creates the storage's schema once, while the other run waits
            pass
    return home


def reap_dead_runs(instance) -> list[str]:
    """Mark failed every run of this machine whose `tuneline` process is gone (kill -9, OOM), freeing whatever
    Dagster concurrency slots it held, and say so. Returns their ids."""
    import dagster as dg
    alive = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(alive),
                                                       tags={"tuneline/host": RUN_TAGS["tuneline/host"]})):
        pid = int(run.tags.get("tuneline/pid", "0"))
        if pid and not process_exists(pid):
            instance.report_run_failed(run, f"its process {pid} is gone (killed?); marked failed by a later run")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            print(f"tuneline: run {run.run_id} was left running by process {pid}, which is gone: marked failed",
                  file=sys.stderr)
            reaped.append(run.run_id)
    return reaped


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
