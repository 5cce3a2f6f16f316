"""How many records a source's files hold, counted apart from the readers (engine/data/readers.py): the other side
of raw_data's every_row_accounted check, so a record the readers skip or the writer loses shows as a difference.

Each format has a deliberately simple counter: a JSON array's items (a scan of its brackets, strings and commas,
which a malformed item does not stop), a JSONL file's non-blank lines, a CSV file's non-empty rows after the
header, a Parquet file's row count from its footer, a save_to_disk folder's or a hub dataset's num_rows.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from engine.data.readers import BOM, SUPPORTED_SUFFIXES, is_hf_dataset, source_files
from engine.errors import DataError

if TYPE_CHECKING:
    from engine.data.registry import DatasetEntry

BLOCK = 1 << 20
# a whole string (skipped as one token), a bracket or comma, or the start of a string the block cuts off
JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]|"', re.DOTALL)


def records_in_source(entry: "DatasetEntry", path: Path) -> int:
    """The records in a registered source's files (all of them: num_samples and max_samples are applied by the
    caller); a hub dataset's num_rows as datasets loads it."""
    if entry.hub_key == "hf_hub_url":
        from datasets import load_dataset  # heavy, and only a hub source needs it
        return load_dataset(str(path), name=entry.subset, data_dir=entry.folder, split=entry.split,
                            revision=entry.revision).num_rows
    return sum(records_in_unit(unit, entry.split) for unit in source_files(path, entry.allowed_roots))


def records_in_unit(unit: Path, split: str = "train") -> int:
    if is_hf_dataset(unit):
        return hf_rows(unit, split)
    counters = {".jsonl": jsonl_lines, ".json": json_items, ".parquet": parquet_rows, ".csv": csv_rows}
    if unit.suffix not in counters:
        raise DataError(f"{unit}: unsupported file type (expected one of {SUPPORTED_SUFFIXES} or a save_to_disk folder)")
    return counters[unit.suffix](unit)


def jsonl_lines(file: Path) -> int:
    with file.open("rb") as handle:
        return sum(1 for i, line in enumerate(handle) if (line[len(BOM):] if i == 0 and line.startswith(BOM)
                                                          else line).strip())


def json_items(file: Path) -> int:
    """Items of a top-level array: its commas outside strings and nested brackets, plus one unless it is empty; 1
    for a document that is not an array. Written here because json and pyarrow parse whole documents and stop at a
    malformed item, which the readers quarantine and count (`[1,,2]` and `[1,2,]` hold three items each)."""
    with file.open("rb") as handle:
        if not handle.read(len(BOM) + 64).removeprefix(BOM).lstrip().startswith(b"["):
            return 1
        handle.seek(0)
        depth, commas, nonblank, text = 0, 0, False, b""
        while block := handle.read(max(BLOCK, len(text))):  # a long cut-off string: read as much again
            text, last, rest = text + block, 0, None
            for match in JSON_TOKENS.finditer(text):
                pos, token = match.start(), match.group()
                if token == b'"':  # a string that goes on in the next block
                    rest = pos
                    break
                if depth == 1 and text[last:pos].strip():
                    nonblank = True  # a number, true, false or null at the top level
                last = match.end()
                if depth == 1 and token != b"]":
                    nonblank = True
                if token in (b"[", b"{"):
                    depth += 1
                elif token in (b"]", b"}"):
                    depth -= 1
                    if depth == 0:
                        return commas + 1 if nonblank else 0
                elif token == b"," and depth == 1:
                    commas += 1
            if rest is None and depth == 1 and text[last:].strip():
                nonblank = True
            text = text[rest:] if rest is not None else b""
    return commas + 1 if nonblank else 0  # a truncated array: the readers stop the stage with DataError


def parquet_rows(file: Path) -> int:
    return pq.ParquetFile(file).metadata.num_rows


def csv_rows(file: Path) -> int:
    """Rows after the header; a row with no fields (a blank line) is no record, as csv.DictReader skips it, and a
    row the csv module refuses (a field over its size limit) is one (the reader quarantines it)."""
    with file.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader, rows = csv.reader(handle), 0
        while True:
            line = reader.line_num
            try:
                rows += bool(next(reader))
            except StopIteration:
                break
            except csv.Error:
                if reader.line_num == line:  # nothing consumed: the reader stopped the stage here too
                    break
                rows += 1
        return max(rows - 1, 0)


def hf_rows(folder: Path, split: str) -> int:
    """A save_to_disk folder's rows (the split's, for a DatasetDict), from the row counts its Arrow files carry."""
    import pyarrow as pa
    if (folder / "dataset_dict.json").is_file():
        folder = folder / split
    files = json.loads((folder / "state.json").read_text())["_data_files"]
    total = 0
    for data in files:
        with pa.memory_map(str(folder / data["filename"])) as source:
            total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    return total
