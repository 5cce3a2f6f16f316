"""Ingest: every registered source into one normalized schema, bad rows into quarantine.

Normalized row: source, row_id, content_hash, format, kind ("sft" | "preference"),
messages (JSON list of {role, content}; for preference rows the prompt), chosen, rejected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from engine.data.registry import DatasetEntry, source_files
from engine.errors import DataError


class BadRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def read_records(file: Path) -> Iterator[tuple[int, Any]]:
    """(index, record) pairs; a JSONL line that is not JSON comes back as a BadRow."""
    if file.suffix == ".jsonl":
        with file.open(encoding="utf-8") as handle:
            for index, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    yield index, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield index, BadRow("invalid_json", f"line {index + 1}: {exc.msg}")
    else:
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: not a readable JSON document ({exc}); fix it or register it as .jsonl") from None
        if not isinstance(records, list):
            records = [records]
        yield from enumerate(records)


def text_field(record: dict, column: str, required: bool) -> str:
    value = record.get(column)
    if value is None:
        if required:
            raise BadRow("missing_field", f"missing column {column!r}")
        return ""
    if not isinstance(value, str):
        raise BadRow("wrong_type", f"column {column!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRow("empty_field", f"column {column!r} is empty")
    return value


def alpaca_prompt(record: dict, entry: DatasetEntry) -> list[dict]:
    messages = []
    system = text_field(record, entry.column("system"), required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for turn in record.get(entry.column("history")) or []:
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise BadRow("wrong_type", "history must be a list of [user, assistant] string pairs")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = text_field(record, entry.column("prompt"), required=True)
    query = text_field(record, entry.column("query"), required=False)
    messages.append({"role": "user", "content": f"{prompt}\n{query}" if query else prompt})
    return messages


def sharegpt_messages(record: dict, entry: DatasetEntry) -> list[dict]:
    column = entry.column("messages")
    turns = record.get(column)
    if turns is None:
        raise BadRow("missing_field", f"missing column {column!r}")
    if not isinstance(turns, list) or not turns:
        raise BadRow("wrong_type", f"column {column!r} must be a non-empty list of messages")
    roles = {entry.tag("user_tag"): "user", entry.tag("assistant_tag"): "assistant", entry.tag("system_tag"): "system"}
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow("wrong_type", f"message {i} must be an object")
        tag, content = turn.get(entry.tag("role_tag")), turn.get(entry.tag("content_tag"))
        if tag not in roles:
            raise BadRow("bad_role", f"message {i}: role {tag!r} is not one of {sorted(roles)}")
        if not isinstance(content, str) or not content.strip():
            raise BadRow("empty_field", f"message {i}: content must be a non-empty string")
        messages.append({"role": roles[tag], "content": content})
    return messages


def check_turns(messages: list[dict], needs_answer: bool) -> None:
    body = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * len(body)
    if [m["role"] for m in body] != expected[: len(body)] or not body:
        raise BadRow("bad_role", "turns must alternate user/assistant after an optional system message")
    if needs_answer and body[-1]["role"] != "assistant":
        raise BadRow("no_assistant_turn", "the conversation does not end with an assistant answer")


def normalize(record: Any, entry: DatasetEntry) -> dict:
    """One record in the source's format -> normalized fields. Raises BadRow with a reason."""
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if entry.ranking:
        if entry.formatting == "alpaca":
            prompt = alpaca_prompt(record, entry)
            chosen = text_field(record, entry.column("chosen"), required=True)
            rejected = text_field(record, entry.column("rejected"), required=True)
        else:
            prompt = sharegpt_messages(record, entry)
            chosen, rejected = (preference_answer(record, entry, entry.column(c)) for c in ("chosen", "rejected"))
        check_turns(prompt + [{"role": "assistant", "content": chosen}], needs_answer=True)
        return {"kind": "preference", "messages": prompt, "chosen": chosen, "rejected": rejected}
    if entry.formatting == "alpaca":
        messages = alpaca_prompt(record, entry)
        messages.append({"role": "assistant", "content": text_field(record, entry.column("response"), required=True)})
    else:
        messages = sharegpt_messages(record, entry)
    check_turns(messages, needs_answer=True)
    return {"kind": "sft", "messages": messages, "chosen": None, "rejected": None}


def preference_answer(record: dict, entry: DatasetEntry, column: str) -> str:
    value = record.get(column)
    if isinstance(value, dict):
        value = value.get(entry.tag("content_tag"))
    if not isinstance(value, str) or not value.strip():
        raise BadRow("empty_field", f"column {column!r} must hold a non-empty answer")
    return value


def source_records(path: Path) -> Iterator[tuple[Path, int, Any]]:
    for file in source_files(path):
        for index, record in read_records(file):
            yield file, index, record


def content_hash(messages: list[dict], chosen: str | None, rejected: str | None) -> str:
    payload = json.dumps({"m": messages, "c": chosen, "r": rejected}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ingest_source(name: str, entry: DatasetEntry, path: Path) -> tuple[list[dict], list[dict]]:
    """All rows of one source (a file or a folder of files): (normalized rows, quarantined rows with reason)."""
    rows, quarantined = [], []
    for file, index, record in source_records(path):
        row_id = f"{name}:{file.relative_to(path)}:{index}" if path.is_dir() else f"{name}:{index}"
        try:
            fields = normalize(record, entry)
        except BadRow as bad:
            quarantined.append({"source": name, "row_id": row_id, "stage": "ingest",
                                "reason": bad.reason, "detail": bad.detail})
            continue
        rows.append({
            "source": name, "row_id": row_id,
            "content_hash": content_hash(fields["messages"], fields["chosen"], fields["rejected"]),
            "format": entry.formatting, "kind": fields["kind"],
            "messages": json.dumps(fields["messages"], ensure_ascii=False),
            "chosen": fields["chosen"], "rejected": fields["rejected"],
        })
    return rows, quarantined


def ingest(sources: dict[str, tuple[DatasetEntry, Path]]) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Every source: (rows, quarantine, per-source counts {rows_in, accepted, quarantined})."""
    rows, quarantine, counts = [], [], {}
    for name, (entry, file) in sources.items():
        good, bad = ingest_source(name, entry, file)
        rows += good
        quarantine += bad
        counts[name] = {"rows_in": len(good) + len(bad), "accepted": len(good), "quarantined": len(bad)}
    return rows, quarantine, counts


def source_identity(sources: dict[str, tuple[DatasetEntry, Path]]) -> dict[str, dict]:
    """What a source's rows depend on, for fingerprints: its registry entry and its file's content hash."""
    return {name: {"entry": entry.model_dump(), "sha256": content_digest(path)} for name, (entry, path) in sources.items()}


def content_digest(path: Path) -> str:
    """sha256 over a source's files (names and bytes): changes when a file is added, removed or edited."""
    digest = hashlib.sha256()
    for file in source_files(path):
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def message_texts(rows: list[dict]) -> list[str]:
    """Every text of normalized rows (messages, chosen, rejected): what a tokenizer is trained on."""
    texts = []
    for row in rows:
        texts += [m["content"] for m in json.loads(row["messages"])]
        texts += [t for t in (row["chosen"], row["rejected"]) if t]
    return texts
