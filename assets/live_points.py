"""A training stage's live points in the Dagster UI while it trains: each point the child sends through Pipes
(engine/train/live.py) becomes an AssetObservation of the asset, with numeric metadata (train/loss,
train/learning_rate, eval/loss, train/tokens_per_second, step) that the asset's Plots tab draws as curves.

Dagster's Pipes handler keeps custom messages until the process ends, and an event a step logs with
context.log_event waits for the step's next yield: neither is live. A point is therefore written as the step's own
event from the reader thread that receives it, the way Dagster's handler writes its log lines and engine events
(DagsterEvent.asset_observation stores the event as it is made).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dagster as dg
from dagster._core.events import DagsterEvent

from engine.train.live import POINT


class LivePointsReader(dg.PipesTempFileMessageReader):
    """The subprocess client's usual message reader (a temporary file it tails), which records live points as they
    arrive and hands every other message to Dagster's handler."""

    def __init__(self, context: dg.AssetExecutionContext, key: dg.AssetKey):
        super().__init__()
        self.context, self.key, self.recorded = context, key, 0

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict]:
        handle = handler.handle_message

        def handle_or_record(message: dict) -> None:
            payload = (message.get("params") or {}).get("payload")
            if message.get("method") == "report_custom_message" and isinstance(payload, dict) and POINT in payload:
                self.record(payload[POINT])
            else:
                handle(message)
        handler.handle_message = handle_or_record
        with super().read_messages(handler) as params:
            yield params

    def record(self, point: dict) -> None:
        metadata = {name: dg.MetadataValue.float(float(value)) for name, value in point.items()
                    if name not in ("stage", "step") and isinstance(value, (int, float))}
        metadata["step"] = dg.MetadataValue.int(int(point["step"]))
        DagsterEvent.asset_observation(self.context.get_step_execution_context(),
                                       dg.AssetObservation(asset_key=self.key, metadata=metadata))
        self.recorded += 1
