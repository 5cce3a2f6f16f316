"""Streaming readers: records from JSON, JSONL, Parquet, CSV files, HF save_to_disk folders and folders of
these, one at a time, never a whole file in memory. A record that cannot be parsed comes back as BadRow."""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from engine.errors import DataError
from engine.store.tables import streamed_parquet

if TYPE_CHECKING:
    from engine.data.registry import DatasetEntry

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
HF_MARKERS = ("state.json", "dataset_dict.json")  # what datasets.save_to_disk writes


class BadRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


def source_files(path: Path, roots: list[Path] | None = None) -> list[Path]:
    """The units a source is read from: the file, an HF dataset folder, or a folder's files and HF datasets.

    Every symbolic link under a folder must resolve inside `roots` (default: the folder itself), and a link
    that points nowhere is refused: DataError naming the link. A folder reached twice through links is read once.
    """
    if not path.is_dir():
        return [path]
    check_links(path, roots or [path.resolve()])
    return _units(path, set())


def _units(path: Path, seen: set[Path]) -> list[Path]:
    real = path.resolve()
    if real in seen:
        return []
    seen.add(real)
    if is_hf_dataset(path):
        return [path]
    units = []
    for child in sorted(path.iterdir()):
        if child.is_dir():
            units += _units(child, seen)
        elif child.suffix in SUPPORTED_SUFFIXES:
            units.append(child)
    return units


def check_links(folder: Path, roots: list[Path]) -> None:
    """Raise DataError for the first symbolic link under `folder` that leaves `roots` or points nowhere."""
    seen = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = Path(current).resolve()
        if real in seen:  # a link loop, or a folder linked twice: walked once
            dirs[:] = []
            continue
        seen.add(real)
        for name in dirs + files:
            entry = Path(current) / name
            if not entry.is_symlink():
                continue
            target = entry.resolve()
            if not any(target.is_relative_to(root) for root in roots):
                raise DataError(f"{entry}: symbolic link to {target} leaves the allowed roots "
                                f"({', '.join(map(str, roots))}); add its folder to data.allowed_roots or remove the link")
            if not target.exists():
                raise DataError(f"{entry}: symbolic link to {target}, which does not exist")


def read_records(unit: Path, split: str = "train") -> Iterator[tuple[int, Any]]:
    """(index, record) pairs of one file or HF dataset folder; a bad record comes back as a BadRow in place of
    its value. Raises DataError if the unit cannot be read at all."""
    try:
        yield from _records(unit, split)
    except OSError as exc:
        raise DataError(f"{unit}: cannot be read ({exc.strerror or exc})") from None


def _records(unit: Path, split: str) -> Iterator[tuple[int, Any]]:
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


def strict_loads(text: str) -> Any:
    """json.loads that refuses what JSON forbids or what later breaks Parquet: NaN and Infinity, numbers out of
    range, duplicate keys, control characters in strings; raises BadRow with the reason."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int,
                          object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        reason = "control_character" if exc.msg.startswith("Invalid control character") else "invalid_json"
        raise BadRow(reason, f"{exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadRow("too_deeply_nested", "nesting exceeds Python's recursion limit") from None
    except ValueError as exc:  # int() over its digit limit
        raise BadRow("invalid_number", str(exc).split(";")[0]) from None


def _no_constant(name: str):
    raise BadRow("non_finite_number", f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRow("non_finite_number", f"{text[:40]} overflows a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRow("invalid_number", f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen, duplicate = set(), None
        for key, _ in pairs:
            if key in seen:
                duplicate = key
                break
            seen.add(key)
        raise BadRow("duplicate_key", f"key {duplicate!r} appears more than once in an object")
    return record


def decode_record(raw: bytes, where: str) -> Any:
    """One record's bytes -> its JSON value, or a BadRow whose detail starts with `where`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow("invalid_utf8", f"{where}: byte {exc.start} is not UTF-8 ({raw[exc.start:exc.start + 1]!r})")
    try:
        value = strict_loads(text)
        if SURROGATE_ESCAPE.search(text):  # cheap screen: only a record that spells \udXXX is walked
            lone_surrogate(value)
        return value
    except BadRow as bad:
        bad.detail = f"{where}: {bad.detail}"
        return bad


SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")


def lone_surrogate(value: Any, path: str = "") -> None:
    """Raise BadRow("invalid_unicode") naming the first string (or key) holding a lone surrogate such as
    "\\ud800": JSON can spell one, but UTF-8 (Parquet, tokenizers) cannot encode it."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                raise BadRow("invalid_unicode", f"{where or 'value'} holds a lone surrogate that UTF-8 cannot encode")
        elif isinstance(item, dict):
            for key, child in item.items():
                if _has_surrogate(key):
                    raise BadRow("invalid_unicode", f"a key in {where or 'the record'} holds a lone surrogate")
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))


def jsonl_records(file: Path) -> Iterator[tuple[int, Any]]:
    """One record per line, read as bytes: a line that is not UTF-8 or not strict JSON comes back as BadRow."""
    with file.open("rb") as handle:
        for index, line in enumerate(handle):
            if index == 0 and line.startswith(BOM):
                line = line[len(BOM):]
            if not line.strip():
                continue
            yield index, decode_record(line.rstrip(b"\r\n"), f"{file.name} line {index + 1}")


def json_records(file: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array is read block by block and parsed item by item, so one bad item (NaN, a huge number,
    invalid UTF-8, duplicate keys) is quarantined and the rest go on; a single top-level object is one record.
    A file whose structure is broken (unbalanced brackets or quotes, truncated) raises DataError naming the
    file, line and column, after the items before the break were served.

    (ijson cannot resume after a bad token, and its C backend crashes on some inputs, so it is not used here.)
    """
    with file.open("rb") as handle:
        head = handle.read(4096)
        offset = len(BOM) if head.startswith(BOM) else 0
        stripped = head[offset:].lstrip()
        handle.seek(offset + len(head[offset:]) - len(stripped))
        if stripped.startswith(b"["):
            yield from array_items(handle, file)
            return
        raw = handle.read(MAX_SINGLE_OBJECT + 1)
    if len(raw) > MAX_SINGLE_OBJECT:
        raise DataError(f"{file}: a single JSON document over {MAX_SINGLE_OBJECT} bytes; register it as .jsonl "
                        "or as a JSON array")
    record = decode_record(raw, file.name)
    if isinstance(record, BadRow) and record.reason in ("invalid_json", "control_character"):
        raise DataError(f"{file}: not a readable JSON document ({record.detail.removeprefix(file.name + ': ')}); "
                        "fix it or register it as .jsonl")
    yield 0, record


MAX_INT_DIGITS = 4300  # Python's own int() limit for decimal strings
MAX_SINGLE_OBJECT = 256 * 1024 * 1024
BOM = b"\xef\xbb\xbf"
_STRUCTURAL = re.compile(r'["\\\[\]{},]')
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int,
                            object_pairs_hook=_unique_keys)


class _ArrayText:
    """The decoded text of a JSON array, read block by block; positions are characters of the whole file."""

    def __init__(self, handle, block_size: int):
        self.handle, self.block_size = handle, block_size
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text, self.base, self.lines, self.eof = "", 0, 0, False
        self.line_start = 0  # where the line holding text[0] starts (a character position of the file)

    def more(self) -> bool:
        """Append a block; False once the file is exhausted."""
        if self.eof:
            return False
        data = self.handle.read(self.block_size)
        self.text += self.decoder.decode(data, final=not data)
        self.eof = not data
        return bool(data)

    def drop_before(self, pos: int) -> int:
        """Forget the text before `pos`; returns pos in the trimmed text."""
        self.lines += self.text.count("\n", 0, pos)
        newline = self.text.rfind("\n", 0, pos)
        if newline >= 0:
            self.line_start = self.base + newline + 1
        self.text, self.base = self.text[pos:], self.base + pos
        return 0

    def where(self, pos: int) -> str:
        """`line L column C` of text[pos] in the file (columns count characters)."""
        newline = self.text.rfind("\n", 0, pos)
        line_start = self.base + newline + 1 if newline >= 0 else self.line_start
        return f"line {self.lines + self.text.count(chr(10), 0, pos) + 1} column {self.base + pos - line_start + 1}"


def array_items(handle, file: Path, block_size: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Items of a top-level JSON array read from `handle` (positioned at its `[`), as (index, value or BadRow).

    Each item is parsed by the C JSON decoder where it stands; an item it refuses is delimited by a scanner that
    tracks strings and brackets, then parsed on its own for its reason, so the items after it still come.
    """
    doc = _ArrayText(handle, block_size)
    doc.more()
    pos, index = 1, 0  # just after the `[`
    while True:
        if not doc.eof and len(doc.text) - pos < block_size // 2:
            pos = doc.drop_before(pos)
            doc.more()
        pos = _WHITESPACE.match(doc.text, pos).end()
        if pos >= len(doc.text):
            if doc.more():
                continue
            raise DataError(f"{file}: not a readable JSON document (it ends at {doc.where(pos)} before the "
                            f"array's closing ']', in item {index}); fix it or register it as .jsonl")
        if index == 0 and doc.text[pos] == "]":
            end = pos  # []
            break
        start, value = pos, None
        try:
            value, stop = _DECODER.raw_decode(doc.text, pos)
            after = _WHITESPACE.match(doc.text, stop).end()
        except (BadRow, json.JSONDecodeError, RecursionError, ValueError):
            after = None
        if after is not None and after >= len(doc.text) and doc.more():
            continue  # the value may go on in the next block: parse it again with more text
        if after is not None and after < len(doc.text) and doc.text[after] in ",]":
            end, raw = after, doc.text[start:stop]
            if _ESCAPED_BYTE.search(raw) or SURROGATE_ESCAPE.search(raw):
                value = _item_value(raw, file, index, doc.where(start))
        else:  # refused, or not followed by `,` or `]`: find where the item ends, then judge it alone
            end = _item_end(doc, start, file, index)
            value = _item_value(doc.text[start:end], file, index, doc.where(start))
        yield index, value
        index, pos = index + 1, end + 1
        if doc.text[end] == "]":
            break
    pos = end + 1
    while True:  # only whitespace may follow the array
        pos = _WHITESPACE.match(doc.text, pos).end()
        if pos < len(doc.text):
            raise DataError(f"{file}: not a readable JSON document (data after the array's closing ']' at "
                            f"{doc.where(pos)}); fix it or register it as .jsonl")
        pos = doc.drop_before(pos)
        if not doc.more():
            return


def _item_end(doc: _ArrayText, start: int, file: Path, index: int) -> int:
    """The position of the `,` or `]` that ends the item starting at `start`, reading more text as needed."""
    depth, in_string, skip_to, scan = 0, False, -1, start
    while True:
        for match in _STRUCTURAL.finditer(doc.text, scan):
            pos = match.start()
            if pos < skip_to:
                continue
            char = doc.text[pos]
            if in_string:
                if char == "\\":
                    skip_to = pos + 2
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "[{":
                depth += 1
            elif depth == 0 and char in ",]":
                return pos
            elif char in "]}":
                depth -= 1
                if depth < 0:
                    raise DataError(f"{file}: not a readable JSON document (unbalanced {char!r} at {doc.where(pos)}, "
                                    f"in item {index}); fix it or register it as .jsonl")
        scan = len(doc.text)
        if not doc.more():
            state = "inside a string" if in_string else f"with {depth + 1} bracket(s) open"
            raise DataError(f"{file}: not a readable JSON document (it ends at {doc.where(len(doc.text))} {state}, "
                            f"in item {index}); fix it or register it as .jsonl")


def _item_value(raw: str, file: Path, index: int, where: str) -> Any:
    """One array item's text -> its value, or a BadRow naming the file, the item and its line."""
    label = f"{file.name} item {index} ({where})"
    if not raw.strip():
        return BadRow("invalid_json", f"{label}: empty array item")
    bad_byte = _ESCAPED_BYTE.search(raw)
    if bad_byte:
        return BadRow("invalid_utf8", f"{label}: byte {ord(bad_byte.group()) - 0xDC00:#04x} is not UTF-8")
    try:
        value = strict_loads(raw)
        if SURROGATE_ESCAPE.search(raw):
            lone_surrogate(value)
        return value
    except BadRow as bad:
        bad.detail = f"{label}: {bad.detail}"
        return bad


def parquet_records(file: Path, batch_size: int = 1024) -> Iterator[dict]:
    try:
        parquet = streamed_parquet(file)
    except Exception as exc:
        raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
    done = 0
    batches = parquet.iter_batches(batch_size=batch_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - a corrupt page: the rest of the file cannot be located
            raise DataError(f"{file}: not a readable Parquet file after row {done} ({type(exc).__name__}: {exc})") from None
        done += batch.num_rows
        yield from batch.to_pylist()


def csv_records(file: Path) -> Iterator[Any]:
    """Rows of a CSV file as dicts; a row with bytes that are not UTF-8, or that the csv module refuses,
    comes back as BadRow and the rest of the file goes on."""
    with file.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        while True:
            line = reader.line_num
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if reader.line_num == line:  # nothing consumed: the reader cannot go on
                    raise DataError(f"{file}: not a readable CSV file at line {line + 1} ({exc})") from None
                yield BadRow("invalid_csv", f"{file.name} line {reader.line_num}: {exc}")
                continue
            bad = next((v for v in record.values() if isinstance(v, str) and _has_surrogate(v)), None)
            if bad is not None or any(isinstance(k, str) and _has_surrogate(k) for k in record):
                yield BadRow("invalid_utf8", f"{file.name} line {reader.line_num}: bytes that are not UTF-8")
            else:
                yield record


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def hf_records(folder: Path, split: str) -> Iterator[dict]:
    from datasets import DatasetDict, load_from_disk  # imported here: heavy, and only this reader needs it
    try:
        dataset = load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; the user needs the one line
        raise DataError(f"{folder}: not a readable save_to_disk folder ({type(exc).__name__}: {exc})") from None
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(f"{folder}: no split {split!r} (has {sorted(dataset)}); set `split` in the registry")
        dataset = dataset[split]
    yield from dataset  # memory-mapped Arrow: rows are read as they are iterated


def hub_records(entry, path: Path) -> Iterator[tuple[int, Any]]:
    """Records of an hf_hub_url entry through datasets.load_dataset, as LLaMA-Factory loads it (path, subset as
    name, folder as data_dir, split, revision); `path` is a local dataset directory or the hub id. A dataset
    that cannot be loaded raises DataError naming it."""
    from datasets import load_dataset  # heavy, and only this reader needs it
    try:
        dataset = load_dataset(str(path), name=entry.subset, data_dir=entry.folder, split=entry.split,
                               revision=entry.revision)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; the user needs the one line
        raise DataError(f"hf_hub_url {entry.hf_hub_url!r}: datasets.load_dataset failed "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    yield from enumerate(dataset)


def source_records(name: str, entry: "DatasetEntry", path: Path, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """(row_id, record) over a source's files, or over its hf_hub_url dataset (datasets.load_dataset); only the
    first num_samples (or `limit`, if smaller) records."""
    def all_records():
        if entry.hub_key == "hf_hub_url":
            for index, record in hub_records(entry, path):
                yield f"{name}:{index}", record
            return
        for unit in source_files(path, entry.allowed_roots):
            prefix = f"{name}:{unit.relative_to(path)}" if path.is_dir() and unit != path else name
            for index, record in read_records(unit, entry.split):
                yield f"{prefix}:{index}", record
    stop = min(n for n in (entry.num_samples, limit) if n) if entry.num_samples or limit else None
    return islice(all_records(), stop) if stop else all_records()
