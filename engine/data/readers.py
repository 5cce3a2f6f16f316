"""Streaming readers: records from JSON, JSONL, Parquet, CSV files, HF save_to_disk folders and folders of
these, one at a time, never a whole file in memory. A record that cannot be parsed comes back as BadRow."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import ijson
import pyarrow.parquet as pq

from engine.errors import DataError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
HF_MARKERS = ("state.json", "dataset_dict.json")  # what datasets.save_to_disk writes


class BadRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


def source_files(path: Path) -> list[Path]:
    """The units a source is read from: the file, an HF dataset folder, or a folder's files and HF datasets."""
    if not path.is_dir() or is_hf_dataset(path):
        return [path]
    units = []
    for child in sorted(path.iterdir()):
        if child.is_dir():
            units += source_files(child)
        elif child.suffix in SUPPORTED_SUFFIXES:
            units.append(child)
    return units


def read_records(unit: Path, split: str = "train") -> Iterator[tuple[int, Any]]:
    """(index, record) pairs of one file or HF dataset folder. Raises DataError if the unit is unreadable."""
    if is_hf_dataset(unit):
        yield from enumerate(hf_records(unit, split))
    elif unit.suffix == ".jsonl":
        yield from jsonl_records(unit)
    elif unit.suffix == ".json":
        yield from json_records(unit)
    elif unit.suffix == ".parquet":
        yield from enumerate(parquet_records(unit))
    elif unit.suffix == ".csv":
        yield from enumerate(csv_records(unit))
    else:
        raise DataError(f"{unit}: unsupported file type (expected one of {SUPPORTED_SUFFIXES} or a save_to_disk folder)")


def jsonl_records(file: Path) -> Iterator[tuple[int, Any]]:
    with file.open(encoding="utf-8", errors="replace") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                yield index, json.loads(line)
            except json.JSONDecodeError as exc:
                yield index, BadRow("invalid_json", f"line {index + 1}: {exc.msg}")


def json_records(file: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array is streamed item by item; a single top-level object is one record."""
    with file.open("rb") as handle:
        head = handle.read(4096).lstrip()
        handle.seek(0)
        try:
            if head.startswith(b"["):
                yield from enumerate(ijson.items(handle, "item", use_float=True))
            else:
                yield 0, json.load(handle)
        except (ijson.JSONError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: not a readable JSON document ({exc}); fix it or register it as .jsonl") from None


def parquet_records(file: Path, batch_size: int = 1024) -> Iterator[dict]:
    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:
        raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
    for batch in parquet.iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def csv_records(file: Path) -> Iterator[dict]:
    with file.open(encoding="utf-8", errors="replace", newline="") as handle:
        yield from csv.DictReader(handle)


def hf_records(folder: Path, split: str) -> Iterator[dict]:
    from datasets import DatasetDict, load_from_disk  # imported here: heavy, and only this reader needs it
    dataset = load_from_disk(str(folder))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(f"{folder}: no split {split!r} (has {sorted(dataset)}); set `split` in the registry")
        dataset = dataset[split]
    yield from dataset  # memory-mapped Arrow: rows are read as they are iterated
