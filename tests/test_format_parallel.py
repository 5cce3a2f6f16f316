"""formatted_data on several processes writes exactly what one process writes: the same view files, splits-*.parquet,
quarantine and report, byte for byte, on the demo data and on generated rows that take every path (multi-turn, tool
calls, rows over cutoff_len truncated or quarantined, preference and KTO rows cut, eval leaks)."""

import hashlib
import json
from pathlib import Path

import pytest

from engine.data.format import format_rows
from engine.models.load import load_tokenizer

CUTOFF = 96
TOOLS = [{"name": "send_email", "parameters": {"recipient": {"type": "string"}}}]


def generated_rows() -> list[dict]:
    """Rows that take each path of format_rows: short, multi-turn, tool, overlength and leaking SFT rows, and
    preference and KTO rows short and over cutoff_len."""
    def row(i, kind, messages, **extra):
        return {"source": "gen", "row_id": f"gen:{i}", "content_hash": f"g{i}", "kind": kind, "label": None,
                "chosen": None, "rejected": None, "tools": None, "messages": json.dumps(messages), **extra}
    rows = []
    for i in range(60):
        words = " ".join(f"w{(i * 7 + k) % 53}" for k in range(3 + (i * 13) % 90))
        user, answer = {"role": "user", "content": f"Task {i}: {words}"}, {"role": "assistant", "content": words[::-1]}
        shape = i % 6
        if shape == 0:
            rows.append(row(i, "sft", [user, answer]))
        elif shape == 1:  # multi-turn, some over cutoff_len: later turns dropped, earlier ones cut
            rows.append(row(i, "sft", [{"role": "system", "content": "Be brief."}, user, answer, user, answer]))
        elif shape == 2:  # a tool call and its result
            rows.append(row(i, "sft", [user, {"role": "function_call", "content": '{"name": "send_email"}'},
                                       {"role": "observation", "content": "sent"}, answer],
                            tools=json.dumps(TOOLS)))
        elif shape == 3:  # a prompt far over cutoff_len with a short answer: the prompt is cut
            rows.append(row(i, "sft", [{"role": "user", "content": words * 4}, {"role": "assistant", "content": "ok"}]))
        elif shape == 4:
            rows.append(row(i, "preference", [user], chosen=words, rejected=words[: len(words) // 2]))
        else:
            rows.append(row(i, "kto", [user, answer], label="true" if i % 4 else "false"))
    twin = "Reverse the order of the words and reply with the result only please: alpha beta gamma delta epsilon"
    rows += [row(100 + i, "sft", [{"role": "user", "content": twin + "!" * i},
                                  {"role": "assistant", "content": "epsilon delta"}]) for i in range(8)]
    return rows


def demo_rows(sample_rows) -> list[dict]:
    from engine.data.ingest import ingest
    from engine.data.registry import resolve_sources
    kto = ingest(resolve_sources("data", "datasets.yaml", ["kto_tasks"]))[0]
    return sample_rows[0] + kto


def digest(out: Path, quarantine: list[dict], report: dict) -> dict[str, str]:
    """sha256 of every file written under `out`, of the quarantine and of the report."""
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out.rglob("*")) if p.is_file()}
    return {**files, "quarantine": hashlib.sha256(json.dumps(quarantine).encode()).hexdigest(),
            "report": hashlib.sha256(json.dumps(report).encode()).hexdigest()}


def formatted(rows, tokenizer, out: Path, overlength: str, **parallel) -> dict[str, str]:
    quarantine, report = format_rows(rows, tokenizer, CUTOFF, 0.3, 0, out, 0.8, overlength, **parallel)
    return digest(out, quarantine, report)


@pytest.mark.parametrize("data,overlength", [("demo", "truncate"), ("generated", "truncate"), ("generated", "drop")])
def test_two_workers_write_the_same_bytes_as_one_process(tiny_model_dir, sample_rows, tmp_path, data, overlength):
    rows = demo_rows(sample_rows) if data == "demo" else generated_rows()
    tokenizer = load_tokenizer(tiny_model_dir)
    one = formatted(rows, tokenizer, tmp_path / "one", overlength)
    two = formatted(rows, tokenizer, tmp_path / "two", overlength, workers=2, batch_rows=max(len(rows) // 9, 1))
    assert one == two
    assert {"sft/train/data-00000-of-00001.arrow", "splits-00000.parquet"} <= set(one)


def test_batched_tokenization_equals_the_row_by_row_tokenization(tiny_model_dir, tmp_path):
    """The SFT view holds, for every row, what tokenize_sft (one tokenizer call per rendered piece) gives it."""
    from datasets import load_from_disk

    from engine.data.format import tokenize_sft, tool_list
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = generated_rows()
    quarantine, report = format_rows(rows, tokenizer, CUTOFF, 0.3, 0, tmp_path, 0.8, workers=2, batch_rows=5)
    assert report["truncated"] > 0 and report["contaminates_eval"] > 0 and report["exceeds_cutoff_len"] == 0
    by_id = {row["row_id"]: row for row in rows}
    sft = load_from_disk(tmp_path / "sft")
    records = list(sft["train"]) + list(sft["eval"])
    assert len(records) == report["sft_train"] + report["sft_eval"] > 20
    for record in records:
        row = by_id[record["row_id"]]
        expected = tokenize_sft(tokenizer, json.loads(row["messages"]), tool_list(row["tools"]), CUTOFF)
        assert (record["input_ids"], record["labels"]) == expected, record["row_id"]
