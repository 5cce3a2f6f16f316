"""What a deployment serves, asked as a user's application asks it, and what the recipe's data says it should be."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.serve.server import Server, free_port


def ask(deployment: Path, messages: list[dict], max_tokens: int = 16) -> tuple[str, str]:
    """(content, finish_reason) of one greedy chat completion from the deployment, served on a free port, through
    the OpenAI client with a key of its own (the smoke test's door and token limit); the server is stopped after."""
    from openai import OpenAI
    key = secrets.token_urlsafe(24)
    with Server(deployment, port=free_port(), timeout=600, api_key=key) as server:
        client = OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)
        response = client.chat.completions.create(model=server.config["served_model_name"], messages=messages,
                                                  max_tokens=max_tokens, temperature=0)
    choice = response.choices[0]
    return choice.message.content, choice.finish_reason


def reference_answer(clean_data: Path, row_id: str) -> str:
    """The last assistant turn of row `row_id` as clean_data wrote it: the answer the data teaches."""
    table = pq.read_table(clean_data / "rows.parquet", columns=["row_id", "messages"])
    (row,) = table.filter(pc.equal(table["row_id"], row_id)).to_pylist()
    return [m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"][-1]
