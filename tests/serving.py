"""What a deployment serves, asked as a user's application asks it, and what the recipe's data says it should be."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.serve.server import Server, chat_completion, free_port
from engine.store.tables import read_table


def ask(deployment: Path, messages: list[dict], max_tokens: int = 16) -> tuple[str, str]:
    """(content, finish_reason) of one greedy chat completion from the deployment, served on a free port behind a
    key of its own, asked through the OpenAI client as the smoke test asks (engine/serve/server.py's
    chat_completion), `max_tokens` at most; the server is stopped after."""
    key = secrets.token_urlsafe(24)
    with Server(deployment, port=free_port(), timeout=600, api_key=key) as server:
        completion = chat_completion(server.base_url, server.config["served_model_name"], messages, max_tokens, key)
    return completion["answer"], completion["finish_reason"]


def reference_answer(clean_data: Path, row_id: str) -> str:
    """The last assistant turn of row `row_id` as clean_data wrote it: the answer the data teaches."""
    table = read_table(clean_data, "rows", columns=["row_id", "messages"])
    (row,) = table.filter(pc.equal(table["row_id"], row_id)).to_pylist()
    return [m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"][-1]
