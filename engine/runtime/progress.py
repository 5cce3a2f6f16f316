"""Progress lines for the stretches of a run that would otherwise print nothing: rows per second through a data
stage, items through an evaluation, layers through a quantization, a wait on another run's lock.

Every line goes to the `tuneline.progress` logger (stdlib logging: engine/ never imports dagster). The asset
forwards it to the run's log (context.log, the UI); the CLI prints it on stderr. Each stage also remembers the
part it was last in, which is what a stopped run names ("stopped during clean_data at dedup")."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Iterator

LOGGER = logging.getLogger("tuneline.progress")
LOGGER.setLevel(logging.INFO)
# seconds: at most one line per stage part this often (a line per row would drown the report); the environment
# variable is for tests that must see lines from a tiny recipe's sub-second stages
INTERVAL = float(os.environ.get("TUNELINE_PROGRESS_INTERVAL", "2.0"))

_parts: dict[str, str] = {}  # stage -> the part it is in now (what a stop names)
_current: list[str] = []  # the stage that reported last (a run runs its stages one at a time)
_clock = {"since": 0.0, "said": 0.0, "running": None}  # the running stage: since when, and when it last said a line


def say(stage: str, part: str, detail: str = "") -> None:
    """One line now: `<stage>: <part><detail>`; `part` is remembered as where the stage is."""
    enter(stage, part)
    _clock["said"] = time.monotonic()
    LOGGER.info(f"{stage}: {part}{detail}")


def enter(stage: str, part: str) -> None:
    """The stage is now in `part` (no line: a short part prints nothing)."""
    _parts[stage] = part
    _current[:] = [stage]


def begin(stage: str) -> None:
    """`stage` runs now: the progress lines that follow are its own (and the heartbeat speaks for it)."""
    _current[:] = [stage]
    _clock.update(since=time.monotonic(), said=time.monotonic(), running=stage)


def end() -> None:
    """No stage runs now (the heartbeat is silent)."""
    _clock["running"] = None


@contextlib.contextmanager
def speaks_for_itself() -> Iterator[None]:
    """While inside, the stage's own process says its progress (a training child): no heartbeat lines."""
    running, _clock["running"] = _clock["running"], None
    try:
        yield
    finally:
        _clock["running"] = running


@contextlib.contextmanager
def heartbeat(poll: float = 0.25) -> Iterator[None]:
    """While inside, a running stage that said nothing for INTERVAL seconds says where it is and for how long
    (`merged_model: 6 s so far`, `clean_data: dedup, 4 s so far`): no stretch of a run is silent (a thread, as
    a stage's library calls cannot be asked to report)."""
    import threading
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(poll):
            stage, now = _clock["running"], time.monotonic()
            if stage and now - _clock["said"] >= INTERVAL:
                _clock["said"] = now
                part = _parts.get(stage)
                LOGGER.info(f"{stage}: {part + ', ' if part else ''}{now - _clock['since']:.0f} s so far")
    thread = threading.Thread(target=beat, name="tuneline-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def where(stage: str) -> str | None:
    """The part the stage was last in, None when it reported nothing."""
    return _parts.get(stage)


def current() -> str | None:
    """The stage that reported last, None before any."""
    return _current[0] if _current else None


def forget() -> None:
    """A new run starts with no stage anywhere."""
    _parts.clear()
    _current.clear()
    end()


class Progress:
    """Counts the items of one part of a stage and says, at most once per INTERVAL, how far it is and how fast:
    `clean_data: dedup 12,000/40,000 rows, 3,100 rows/s`. Nothing is said for a part shorter than INTERVAL."""

    def __init__(self, part: str, total: int | None = None, unit: str = "rows", stage: str | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        stage = stage or current() or "tuneline"  # None: the stage that runs now (begin)
        self.stage, self.part, self.total, self.unit = stage, part, total, unit
        self.interval, self.clock = INTERVAL if interval is None else interval, clock
        self.done, self.started = 0, clock()
        self.last = self.started
        enter(stage, part)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            say(self.stage, self.part, f" {self.line(now)}")

    def line(self, now: float) -> str:
        of = f"/{self.total:,}" if self.total is not None else ""
        rate = self.done / max(now - self.started, 1e-9)
        return f"{self.done:,}{of} {self.unit}, {rate:,.{1 if rate < 100 else 0}f} {self.unit}/s"

    def each(self, items, n: Callable[[object], int] = lambda item: 1) -> Iterator:
        """`items`, counting each (or n(item) for a batch) as it is handed out."""
        for item in items:
            yield item
            self.advance(n(item))


@contextlib.contextmanager
def forwarded(to: Callable[[int, str], None]) -> Iterator[None]:
    """While inside, every progress line also goes to `to(level, line)` (the asset passes context.log.log)."""
    handler = _CallHandler(to)
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)


class _CallHandler(logging.Handler):
    def __init__(self, to: Callable[[int, str], None]):
        super().__init__(logging.INFO)
        self.to = to

    def emit(self, record: logging.LogRecord) -> None:
        self.to(record.levelno, record.getMessage())
