"""Ingest: every registered source into one normalized schema, bad rows into quarantine.

Normalized row: source, row_id, content_hash, format, kind ("sft" | "preference" | "kto"),
messages (JSON list of {role, content}; for preference rows the prompt), chosen, rejected,
tools (JSON text or null), label ("true"/"false" for KTO rows).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from engine.runtime.progress import Progress
from engine.data.readers import BadRow, source_records
from engine.data.record_counts import records_in_source
from engine.data.registry import DatasetEntry, recipe_selection
from engine.store.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, ShardWriter

if TYPE_CHECKING:
    from engine.stage import StageRun

PROMPT_ROLES, ANSWER_ROLES = ("user", "observation"), ("assistant", "function_call")


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
    history = record.get(entry.column("history")) or []
    if not isinstance(history, list):
        raise BadRow("wrong_type", f"column {entry.column('history')!r} must be a list of [user, assistant] pairs")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
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
    roles = {entry.tag("user_tag"): "user", entry.tag("assistant_tag"): "assistant",
             entry.tag("system_tag"): "system", entry.tag("observation_tag"): "observation",
             entry.tag("function_tag"): "function_call"}
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


def check_turns(messages: list[dict], ends_with_answer: bool) -> None:
    """LLaMA-Factory's rule: after an optional system message, turns alternate between a prompt
    (user or observation) and an answer (assistant or function_call), starting with the user."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        raise BadRow("bad_role", "the conversation must start with a user message (after an optional system one)")
    for i, message in enumerate(body):
        expected = PROMPT_ROLES if i % 2 == 0 else ANSWER_ROLES
        if message["role"] not in expected:
            raise BadRow("bad_role", f"turn {i} is {message['role']!r}, expected one of {expected}")
    if ends_with_answer and body[-1]["role"] not in ANSWER_ROLES:
        raise BadRow("no_assistant_turn", "the conversation does not end with an assistant answer")
    if not ends_with_answer and body[-1]["role"] not in PROMPT_ROLES:
        raise BadRow("bad_role", "a preference prompt must end with a user (or observation) turn")


def tools_field(record: dict, entry: DatasetEntry) -> str | None:
    tools = record.get(entry.column("tools"))
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise BadRow("wrong_type", f"column {entry.column('tools')!r} must be JSON describing the tools") from None
    return json.dumps(tools, ensure_ascii=False)  # the file's key order: the template renders it, as LLaMA-Factory's


def kto_label(record: dict, entry: DatasetEntry) -> str | None:
    column = entry.column("kto_tag")
    if column not in record or "kto_tag" not in entry.columns:
        return None
    value = record[column]
    if not isinstance(value, bool):
        raise BadRow("wrong_type", f"column {column!r} must be true or false, got {value!r}")
    return "true" if value else "false"


def preference_answer(record: dict, entry: DatasetEntry, column: str) -> str:
    value = record.get(column)
    if isinstance(value, dict):
        value = value.get(entry.tag("content_tag"))
    if not isinstance(value, str) or not value.strip():
        raise BadRow("empty_field", f"column {column!r} must hold a non-empty answer")
    return value


def normalize(record: Any, entry: DatasetEntry) -> dict:
    """One record in the source's format -> normalized fields. Raises BadRow with a reason."""
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    tools = tools_field(record, entry)
    if entry.ranking:
        prompt = alpaca_prompt(record, entry) if entry.formatting == "alpaca" else sharegpt_messages(record, entry)
        columns = (entry.column("chosen"), entry.column("rejected"))
        if entry.formatting == "alpaca":
            chosen, rejected = (text_field(record, c, required=True) for c in columns)
        else:
            chosen, rejected = (preference_answer(record, entry, c) for c in columns)
        check_turns(prompt, ends_with_answer=False)
        return {"kind": "preference", "messages": prompt, "chosen": chosen, "rejected": rejected, "tools": tools,
                "label": None}
    if entry.formatting == "alpaca":
        messages = alpaca_prompt(record, entry)
        messages.append({"role": "assistant", "content": text_field(record, entry.column("response"), required=True)})
    else:
        messages = sharegpt_messages(record, entry)
    check_turns(messages, ends_with_answer=True)
    label = kto_label(record, entry)
    return {"kind": "kto" if label else "sft", "messages": messages, "chosen": None, "rejected": None,
            "tools": tools, "label": label}


def content_hash(messages: list[dict], chosen: str | None, rejected: str | None, tools: str | None = None,
                 label: str | None = None) -> str:
    payload = json.dumps({"m": messages, "c": chosen, "r": rejected, "t": tools, "l": label},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ingest_stream(name: str, entry: DatasetEntry, path: Path) -> Iterator[tuple[bool, dict]]:
    """One source, record by record: (True, normalized row) or (False, quarantined row with reason and detail).

    Whatever goes wrong with one record (a BadRow from the reader, a record that does not fit the format, a
    text that is not valid Unicode, any exception while normalizing it) quarantines that record alone.
    """
    for row_id, record in source_records(name, entry, path):
        try:
            row = normalized_row(name, entry, row_id, record)
        except BadRow as bad:
            yield False, quarantined(name, row_id, bad.reason, bad.detail)
            continue
        except Exception as exc:  # noqa: BLE001 - one record never takes the stage down
            yield False, quarantined(name, row_id, "unreadable_record", f"{type(exc).__name__}: {exc}")
            continue
        yield True, row


def normalized_row(name: str, entry: DatasetEntry, row_id: str, record: Any) -> dict:
    fields = normalize(record, entry)
    row = {
        "source": name, "row_id": row_id, "format": entry.formatting, "kind": fields["kind"],
        "messages": json.dumps(fields["messages"], ensure_ascii=False),
        "chosen": fields["chosen"], "rejected": fields["rejected"], "tools": fields["tools"],
        "label": fields["label"],
    }
    check_utf8(fields)
    row["content_hash"] = content_hash(fields["messages"], fields["chosen"], fields["rejected"], fields["tools"],
                                       fields["label"])
    return row


def check_utf8(fields: dict) -> None:
    """Every text must encode as UTF-8 (Parquet and tokenizers need it): a lone surrogate such as "\\ud800",
    which JSON can spell, raises BadRow naming the field."""
    texts = [(f"messages[{i}].{key}", m[key]) for i, m in enumerate(fields["messages"]) for key in ("role", "content")]
    texts += [(key, fields[key]) for key in ("chosen", "rejected", "tools", "label")]
    for field, text in texts:
        if text is None:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRow("invalid_unicode", f"{field}: character {exc.start} is {text[exc.start]!r}, a lone "
                                            "surrogate that UTF-8 cannot encode") from None


def quarantined(name: str, row_id: str, reason: str, detail: str) -> dict:
    """A quarantine row; its texts are made UTF-8-safe (backslash escapes) so the table can always be written."""
    safe = lambda text: text.encode("utf-8", "backslashreplace").decode("utf-8")  # noqa: E731
    return {"source": name, "row_id": safe(row_id), "stage": "ingest", "reason": reason, "detail": safe(detail)[:500]}


def ingest_source(name: str, entry: DatasetEntry, path: Path) -> tuple[list[dict], list[dict]]:
    """All rows of one source in memory: (normalized rows, quarantined rows). For small data and tests."""
    rows, quarantined = [], []
    for good, item in ingest_stream(name, entry, path):
        (rows if good else quarantined).append(item)
    return rows, quarantined


def ingest(sources: dict[str, tuple[DatasetEntry, Path]]) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Every source: (rows, quarantine, per-source counts {rows_in, accepted, quarantined})."""
    rows, quarantine, counts = [], [], {}
    for name, (entry, path) in sources.items():
        good, bad = ingest_source(name, entry, path)
        rows += good
        quarantine += bad
        counts[name] = {"rows_in": len(good) + len(bad), "accepted": len(good), "quarantined": len(bad)}
    return rows, quarantine, counts


def ingest_to(out: Path, sources: dict[str, tuple[DatasetEntry, Path]], max_samples: int | None = None) -> dict:
    """Stream every source into the sharded tables `rows` and `quarantine` of `out`; with `max_samples` (LLaMA-Factory's
    key), only each source's first that many records, the rest counted as `beyond_max_samples`, never stored.
    Returns counts, in total and per source; `records_in_files` and `num_samples` per source are what raw_data's
    every_row_accounted check expects the written tables to hold (record_counts.py counts apart from the readers)."""
    counts, reasons = {}, Counter()
    with ShardWriter(out, "rows", ROW_COLUMNS) as rows, ShardWriter(out, "quarantine", QUARANTINE_COLUMNS) as quarantine:
        for name, (entry, path) in sources.items():
            before, beyond = (rows.count, quarantine.count), 0
            for good, item in Progress(f"reading {name}").each(ingest_stream(name, entry, path)):
                if max_samples is not None and rows.count + quarantine.count - sum(before) >= max_samples:
                    beyond += 1
                    continue
                (rows if good else quarantine).add(item)
                if not good:
                    reasons[item["reason"]] += 1
            accepted, rejected = rows.count - before[0], quarantine.count - before[1]
            counts[name] = {"rows_in": accepted + rejected, "accepted": accepted, "quarantined": rejected,
                            **({"beyond_max_samples": beyond} if max_samples is not None else {}),
                            # counted after the readers, so a file they cannot read stops the stage with their error
                            "records_in_files": records_in_source(entry, path), "num_samples": entry.num_samples}
    return {"rows": rows.count, "quarantined": quarantine.count, "by_source": counts,
            "quarantine_by_reason": dict(reasons)}


def read_raw_data(run: "StageRun") -> dict:
    """raw_data's entry point: every registered source the recipe selects, streamed into Parquet; the registered
    entries it does not use are listed with the reason (`not_used`), so a stock registry's hub or multimodal
    entries are reported, never an error."""
    selection = recipe_selection(run.recipe.data)
    return {**ingest_to(run.out, selection.sources, run.recipe.data.max_samples), "not_used": selection.not_used}
