"""Formatting: chat-template rendering, tokenization with the prompt masked, seeded train/eval split.

The SFT view holds input_ids and labels (-100 on every non-assistant token), tokenized turn by
turn as LLaMA-Factory does, so the prompt tokens are exactly those the model sees when served.
The preference view holds conversational prompt/chosen/rejected for TRL's reward and DPO trainers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, Features, List, Value

from engine.data.clean import dedup_text
from engine.constants import DEFAULT_NUM_PERM, DEFAULT_SHINGLE, IGNORE
from engine.data.dedup import near_duplicate_clusters
from engine.data.split import split_of
from engine.errors import DataError

if TYPE_CHECKING:
    from engine.stage import StageRun

TRAINED_ROLES = ("assistant", "function_call")  # as LLaMA-Factory: the model learns its answers and its tool calls
MESSAGES = List({"role": Value("string"), "content": Value("string")})
VIEW_FEATURES = {
    "sft": Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")), "row_id": Value("string")}),
    "preference": Features({"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "row_id": Value("string")}),
    "kto": Features({"prompt": MESSAGES, "completion": MESSAGES, "label": Value("bool"), "row_id": Value("string")}),
}
REQUIRED_VIEWS = ("sft", "preference")  # what the SFT, reward and DPO stages train on; KTO data is optional


class TemplateMismatch(ValueError):
    pass


def chat_messages(messages: list[dict]) -> list[dict]:
    """LLaMA-Factory's roles -> the roles HF chat templates render: a tool call is an assistant turn
    (wrapped in <tool_call> as Qwen2.5's template does), a tool result is a `tool` turn."""
    rendered = []
    for message in messages:
        if message["role"] == "function_call":
            rendered.append({"role": "assistant", "content": f"<tool_call>\n{message['content']}\n</tool_call>"})
        elif message["role"] == "observation":
            rendered.append({"role": "tool", "content": message["content"]})
        else:
            rendered.append(message)
    return rendered


def assistant_segments(tokenizer, messages: list[dict], tools: list | None = None) -> list[tuple[str, bool]]:
    """Rendered text split into (segment, is_trained) pieces, in order: answers and tool calls are trained."""
    pieces, done = [], ""
    trained = [m["role"] in TRAINED_ROLES for m in messages]
    messages = chat_messages(messages)
    for k in range(len(messages)):
        if not trained[k]:
            continue
        prefix = tokenizer.apply_chat_template(messages[:k], tools=tools, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages[: k + 1], tools=tools, tokenize=False)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise TemplateMismatch("the chat template does not render conversations as growing prefixes")
        pieces += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    return pieces


def tokenize_sft(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[list[int], list[int]]:
    input_ids, labels = [], []
    for text, trainable in assistant_segments(tokenizer, messages, tools):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trainable else [IGNORE] * len(ids)
    return input_ids, labels


def contaminated(rows: list[dict], splits: list[str], threshold: float) -> dict[int, str]:
    """{index of a train row: detail} for every train row that near-duplicates an eval row."""
    evals = [i for i, s in enumerate(splits) if s == "eval"]
    trains = [i for i, s in enumerate(splits) if s == "train"]
    order = evals + trains  # eval rows first: a cluster that holds one is rooted at it
    found = {}
    texts = [dedup_text({**rows[i], "messages": json.loads(rows[i]["messages"])}) for i in order]
    for root, member, jaccard in near_duplicate_clusters(texts, threshold, DEFAULT_NUM_PERM, DEFAULT_SHINGLE):
        if root < len(evals) <= member:
            found[order[member]] = f"~{jaccard:.2f} Jaccard with eval row {rows[order[root]]['row_id']}"
    return found


def length_histogram(lengths: list[int], cutoff_len: int, buckets: int = 8) -> list[tuple[str, int]]:
    width = max(1, -(-cutoff_len // buckets))
    counts = [0] * buckets
    for n in lengths:
        counts[min(n // width, buckets - 1)] += 1
    return [(f"{i * width}-{(i + 1) * width - 1}", c) for i, c in enumerate(counts)]


def format_rows(rows: list[dict], tokenizer, cutoff_len: int, val_size: float, seed: int, out: Path,
                decontamination_threshold: float | None = None) -> tuple[list[dict], dict]:
    """Write `out/sft`, `out/preference` and, with KTO rows, `out/kto` (HF DatasetDicts with train/eval),
    and `out/splits.parquet`.

    Returns (quarantined rows, report). A row longer than cutoff_len is quarantined, never truncated.
    Raises DataError when a view's train or eval split would be empty.
    """
    views: dict[str, dict[str, list]] = {view: {"train": [], "eval": []} for view in VIEW_FEATURES}
    quarantine, provenance, lengths = [], [], []
    splits = [split_of(row["content_hash"], val_size, seed) for row in rows]
    leaks = contaminated(rows, splits, decontamination_threshold) if decontamination_threshold else {}
    for index, (row, split) in enumerate(zip(rows, splits, strict=True)):
        if index in leaks:
            quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": "format",
                               "reason": "contaminates_eval", "detail": leaks[index]})
            continue
        messages = json.loads(row["messages"])
        tools = json.loads(row["tools"]) if row.get("tools") else None
        if row["kind"] == "sft":
            input_ids, labels = tokenize_sft(tokenizer, messages, tools)
            length = len(input_ids)
            record = {"input_ids": input_ids, "labels": labels, "row_id": row["row_id"]}
        elif row["kind"] == "kto":
            length = len(tokenize_sft(tokenizer, messages, tools)[0])
            rendered = chat_messages(messages)
            record = {"prompt": rendered[:-1], "completion": rendered[-1:], "label": row["label"] == "true",
                      "row_id": row["row_id"]}
        else:
            prompt_len = len(tokenizer.apply_chat_template(chat_messages(messages), add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"])
            answer_len = max(len(tokenizer(row[c] + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
                             for c in ("chosen", "rejected"))
            length = prompt_len + answer_len
            record = {"prompt": chat_messages(messages), "chosen": [{"role": "assistant", "content": row["chosen"]}],
                      "rejected": [{"role": "assistant", "content": row["rejected"]}], "row_id": row["row_id"]}
        if length > cutoff_len:
            quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": "format",
                               "reason": "exceeds_cutoff_len", "detail": f"{length} tokens > cutoff_len {cutoff_len}"})
            continue
        lengths.append(length)
        views[row["kind"]][split].append(record)
        provenance.append({"source": row["source"], "row_id": row["row_id"], "content_hash": row["content_hash"],
                           "view": row["kind"], "split": split})
    for view, splits in views.items():
        if view not in REQUIRED_VIEWS and not any(splits.values()):
            continue
        for split, records in splits.items():
            if not records:
                raise DataError(f"no {view} rows reached the {split} split: register {view} data "
                                f"({'ranking: true' if view == 'preference' else 'instruction data'}) or adjust data.val_size")
        features = VIEW_FEATURES[view]
        DatasetDict({s: Dataset.from_dict({k: [r[k] for r in records] for k in features}, features=features)
                     for s, records in splits.items()}).save_to_disk(out / view)
    Dataset.from_list(provenance).to_parquet(out / "splits.parquet")
    counts = Counter((p["view"], p["split"]) for p in provenance)
    report = {
        "sft_train": counts[("sft", "train")], "sft_eval": counts[("sft", "eval")],
        "preference_train": counts[("preference", "train")], "preference_eval": counts[("preference", "eval")],
        "kto_train": counts[("kto", "train")], "kto_eval": counts[("kto", "eval")],
        "max_tokens": max(lengths, default=0), "mean_tokens": round(sum(lengths) / max(len(lengths), 1), 1),
        "cutoff_len": cutoff_len, "exceeds_cutoff_len": sum(q["reason"] == "exceeds_cutoff_len" for q in quarantine),
        "contaminates_eval": len(leaks), "length_histogram": length_histogram(lengths, cutoff_len),
        "rows_in_by_source": dict(Counter(r["source"] for r in rows)),
        "rows_out_by_source": dict(Counter(p["source"] for p in provenance)),
        "sft_rows_without_labels": sum(all(l == IGNORE for l in r["labels"]) for s in views["sft"].values() for r in s),
    }
    return quarantine, report



def build_formatted_data(run: "StageRun") -> dict:
    """formatted_data's entry point: clean_data's rows rendered with the base model's chat template, tokenized,
    split; the views as HF datasets, the split of every row and the quarantine as Parquet. Returns the report."""
    from engine.models import load_tokenizer, model_dir
    from engine.tables import QUARANTINE_COLUMNS, read_rows, write_rows
    data = run.recipe.data
    quarantine, report = format_rows(read_rows(run.inputs["clean_data"] / "rows.parquet"),
                                     load_tokenizer(model_dir(run.inputs["base_model"])), data.cutoff_len,
                                     data.val_size, data.seed, run.out, data.decontamination_threshold)
    write_rows(quarantine, run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return report
