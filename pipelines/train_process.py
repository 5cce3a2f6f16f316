"""`python -m pipelines.train_process <stage> --spec spec.json`: a training stage (or an export or evaluation stage
in a pod) as the process Dagster Pipes launches. The engine runs the stage (engine/train/child.py); this module only
carries its log lines and metrics back through Pipes (the `dagster-pipes` package, not dagster itself) when a Pipes
session started it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Callable, Iterator

from engine.train.child import main, rank, stderr_reporter


@contextlib.contextmanager
def pipes_reporter() -> Iterator[tuple[Callable[[str], None], Callable[[dict], None]]]:
    """(say, report_metrics) into the Dagster run that launched us: lines into its log (and onto the terminal of a
    `tuneline run`), metrics as a custom message; stderr only when no Pipes session started this process."""
    if rank() != 0 or not os.environ.get("DAGSTER_PIPES_CONTEXT"):
        with stderr_reporter() as reporting:
            yield reporting
        return
    from dagster_pipes import open_dagster_pipes
    with open_dagster_pipes() as pipes:
        def say(line: str) -> None:
            pipes.log.info(line)
            print(line, file=sys.stderr, flush=True)
        yield say, lambda metrics: pipes.report_custom_message(json.loads(json.dumps(metrics, default=str)))


if __name__ == "__main__":
    sys.exit(main(reporter=pipes_reporter, orchestrated=bool(os.environ.get("DAGSTER_PIPES_CONTEXT"))))
