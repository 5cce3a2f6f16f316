"""The artifact root (TUNELINE_HOME): the one object that knows every path under it.

    <root>/artifacts/<asset>/<fingerprint>/     finished artifacts (complete once manifest.json exists)
    <root>/artifacts/<asset>/.work-<fp>/         the one work directory of a fingerprint being built
    <root>/artifacts/<asset>/.run-<fp>/          a training process's spec.json and result.json
    <root>/locks/<asset>-<fp>.lock               per-fingerprint lock: exclusive to build, shared to read (removed
                                                 by retention once no artifact or build of <fp> is left)
    <root>/locks/training.lock                   one training at a time on this machine (freed when its holder dies);
                                                 not taken where TUNELINE_GPU_POOL names a Dagster pool (a cluster)
    <root>/catalog.duckdb                        the catalog, derived from the artifacts
    <root>/digests.json                          remembered content digests of outside files
    <root>/dagster/                              the Dagster instance of `tuneline run` (unless DAGSTER_HOME says)

check_home() refuses, at the start of a run, a home that another user can change: whoever can write it chooses what
the next run loads and serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import socket
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from engine.errors import TunelineError
from engine.store.artifacts import ArtifactStore
from engine.store.catalog import Catalog
from engine.store.content import ContentHasher


class Home:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.artifacts = self.root / "artifacts"
        self.locks = self.root / "locks"
        self.catalog_path = self.root / "catalog.duckdb"
        self.digests_path = self.root / "digests.json"

    def store(self, keep_last: int | None = None) -> ArtifactStore:
        return ArtifactStore(self.artifacts, keep_last=keep_last, lock=self.try_lock_exclusive,
                             remove_stale_locks=self.remove_stale_locks)

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_path)

    def hasher(self) -> ContentHasher:
        return ContentHasher(self.digests_path)

    def artifact_dir(self, asset: str, fingerprint: str) -> Path:
        return self.artifacts / asset / fingerprint

    def work_dir(self, asset: str, fingerprint: str) -> Path:
        """Fixed per fingerprint (so an interrupted build finds its own work again), private under its lock."""
        return self.artifacts / asset / f".work-{fingerprint}"

    def run_dir(self, asset: str, fingerprint: str) -> Path:
        """Where the orchestrator and a training process exchange the spec and the result (never published)."""
        return self.artifacts / asset / f".run-{fingerprint}"

    def lock_path(self, asset: str, fingerprint: str) -> Path:
        return self.locks / ("training.lock" if asset == "training" else f"{asset}-{fingerprint}.lock")

    def training_slot(self, stage: str, waiting: Callable[[str], None] | None = None):
        """The machine's one training slot, held while a training stage trains (a cache hit never asks for it).
        A file lock, not a Dagster pool slot: the kernel frees it when its holder dies, even by kill -9. Where
        TUNELINE_GPU_POOL names a pool (a team deployment, pipelines/deploy/), the Dagster pool of that name admits
        training steps across the cluster instead, and no file lock is taken."""
        if training_pool():
            return contextlib.nullcontext()
        return self.lock("training", "slot", waiting=waiting, what=f"training ({stage} waits)")

    @contextlib.contextmanager
    def lock(self, asset: str, fingerprint: str, shared: bool = False,
             waiting: Callable[[str], None] | None = None, what: str | None = None) -> Iterator[None]:
        """Hold the fingerprint's lock: exclusive to build it, shared to read it. The kernel releases a lock
        when its holder dies (even by kill -9), so a crashed run never blocks the next one. `waiting` is told
        who holds it, once, when the lock is not free at once."""
        path = self.lock_path(asset, fingerprint)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

        def wait(handle) -> None:
            if not waiting:
                fcntl.flock(handle, mode)  # blocks in the kernel: no busy loop
                return
            handle.seek(0)
            holder = handle.read().strip() or "another run"
            held = f"{what} is held by {holder}" if what else f"{asset} {fingerprint} is being built by {holder}"
            waiting(f"{held}; waiting for it" + ("" if what else ", then reusing it"))
            started = time.monotonic()
            # polled rather than blocking in the kernel, so that a long wait is said again every WAIT_REPORT seconds
            while not try_flock(handle, mode, timeout=WAIT_REPORT):
                waiting(f"{held}; still waiting after {time.monotonic() - started:.0f} s")
        with locked_file(path, mode, wait) as handle:
            if not shared:
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
                handle.flush()
            yield

    def try_lock_exclusive(self, asset: str, fingerprint: str) -> contextlib.AbstractContextManager | None:
        """The fingerprint's exclusive lock if it is free now (retention uses it to skip artifacts in use)."""
        handle = open_locked(self.lock_path(asset, fingerprint), fcntl.LOCK_EX, wait=None)
        if handle is None:
            return None

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            try:
                yield
            finally:
                handle.close()
        return held()

    def remove_stale_locks(self, asset: str) -> list[Path]:
        """Retention of lock files: `asset`'s locks whose fingerprint has no artifact, work or run directory left
        and that no one holds. Each is unlinked while held exclusively; a run that opened it before the unlink
        finds, once it gets the lock, that the path no longer names its file, and locks the new one (open_locked).
        Returns the removed."""
        removed = []
        for path in sorted(self.locks.glob(f"{asset}-*.lock")):
            fingerprint = path.name.removeprefix(f"{asset}-").removesuffix(".lock")
            if "-" in fingerprint or self.in_use(asset, fingerprint):
                continue  # another asset's lock whose name starts like this one's, or one still needed
            handle = open_locked(path, fcntl.LOCK_EX, wait=None)
            if handle is None:
                continue  # held: someone builds or reads it now
            with handle:
                if not self.in_use(asset, fingerprint):  # built meanwhile by a run that held it before us
                    path.unlink()
                    removed.append(path)
        return removed

    def in_use(self, asset: str, fingerprint: str) -> bool:
        return any(p.exists() for p in (self.artifact_dir(asset, fingerprint), self.work_dir(asset, fingerprint),
                                        self.run_dir(asset, fingerprint)))


def same_file(handle, path: Path) -> bool:
    """Whether `path` still names the open file `handle` (retention may have unlinked it meanwhile)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (named.st_ino, named.st_dev) == (mine.st_ino, mine.st_dev)


WAIT_REPORT = 30.0  # seconds between the lines of a run that waits on another run's lock


GPU_POOL_ENV = "TUNELINE_GPU_POOL"


def training_pool() -> str | None:
    """The Dagster pool (concurrency key) training steps take a slot of, one per GPU class (e.g. gpu-h100): set in
    a team deployment's code location, where the pool's limit replaces the machine's training lock; None: the lock."""
    return os.environ.get(GPU_POOL_ENV, "").strip() or None


def try_flock(handle, mode: int, timeout: float, poll: float = 0.2) -> bool:
    """flock within `timeout` seconds (polled every `poll` s: flock itself has no timeout); False if still held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


def open_locked(path: Path, mode: int, wait: Callable[[object], None] | None):
    """`path` opened and flock'ed in `mode`: at once, else through `wait(handle)` (which blocks until it has the
    lock), else None. A lock taken on a file that retention unlinked meanwhile guards nothing: the path is then
    opened again (retention unlinks only while it holds the lock, so once we hold it the check is final)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is None:
                handle.close()
                return None
            wait(handle)
        if same_file(handle, path):
            return handle
        handle.close()


@contextlib.contextmanager
def locked_file(path: Path, mode: int, wait: Callable[[object], None]) -> Iterator:
    handle = open_locked(path, mode, wait)
    try:
        yield handle
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

class UnsafeHome(TunelineError):
    """The artifact root, or a folder in it, can be changed by another user."""


# the folders whose writers decide what a run loads: the root (catalog, digests), the artifacts and each asset's
# folder in it (artifacts, the training spec.json), the locks (a planted link would be truncated), the Dagster home
PROTECTED = ("", "artifacts", "locks", "dagster")


def check_home(root: str | Path, option: str = "--artifact-root / TUNELINE_HOME") -> None:
    """Refuse a home whose folders group or others can write, or another user owns (root may), as ssh refuses such a
    key file; one line names the folder and the command that fixes it. Checked on the mode bits (root bypasses
    permission checks, never the bits). Folders not made yet are skipped; this process's umask drops group and
    other write (umask |= 022, first: so the folders a run makes pass the next check under a umask 002 too)."""
    os.umask(os.umask(0o022) | 0o022)
    base = Path(root).resolve()
    folders = [base / name for name in PROTECTED]
    if (base / "artifacts").is_dir():
        folders += sorted(p for p in (base / "artifacts").iterdir() if p.is_dir())
    me = os.geteuid()
    for folder in folders:
        try:
            info = folder.stat()  # a link is judged, and named, by the folder it leads to
        except FileNotFoundError:
            continue
        folder = folder.resolve()
        if info.st_uid not in (me, 0):
            raise UnsafeHome(f"{option} {base}: {folder} is owned by {user_name(info.st_uid)}, not by "
                             f"{user_name(me)}; another user can change what a run loads (expected your own "
                             f"folder: `chown -R {user_name(me)} {base}`, or use a home of your own)")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            who = " and ".join(w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others"))
                               if info.st_mode & bit)
            raise UnsafeHome(f"{option} {base}: {folder} is writable by {who} (mode "
                             f"{stat.filemode(info.st_mode)}); whoever can write it chooses what the next run loads "
                             f"(expected no group or other write: `chmod go-w {folder}`)")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
