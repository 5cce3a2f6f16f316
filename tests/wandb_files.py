"""Reading back a W&B run's .wandb file, as `wandb sync` would upload it. wandb 0.31 writes and reads it in its Go
core only (no Python reader ships), so the format is read here by hand: a 7-byte header (":W&B", magic, version),
then LevelDB's log format (32 KiB blocks; each chunk: crc32 4, length 2, type 1 (full 1, first 2, middle 3, last 4)),
each record a wandb_internal_pb2.Record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

HEADER, BLOCK, CHUNK_HEADER = 7, 32768, 7


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending = HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < CHUNK_HEADER or (length == 0 and kind == 0):  # a block's zero-filled tail
            pos += left
            continue
        pending += data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def history(path: Path) -> list[dict]:
    """Each history row the run logged, {key: value}."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records(path) if record.WhichOneof("record_type") == "history"]
