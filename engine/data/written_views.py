"""formatted_data's written views read back, for its checks: the SFT view's labels decoded and compared with the
answers of the rows they were made from (clean_data's written rows), every written row's length, and the rows of
each eval split. Nothing here is taken from the counters formatting kept while it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.data.constants import IGNORE
from engine.data.format import TRAINED_ROLES, chat_messages, conversation_length
from engine.errors import DataError
from engine.store.digests import MANIFEST
from engine.store.tables import rows_with_ids, table_batches

DECODED_PER_SPLIT = 512  # rows per split whose labels are decoded (evenly spaced); every row's labels are counted


def parent_dir(artifact_dir: Path, asset: str) -> Path:
    """The directory of the `asset` artifact this artifact was built from (its manifest names it; the store keeps
    every artifact as <asset>/<fingerprint> side by side). DataError when it is gone."""
    fingerprint = json.loads((artifact_dir / MANIFEST).read_text())["parents"][asset]
    path = artifact_dir.parent.parent / asset / fingerprint
    if not (path / MANIFEST).is_file():
        raise DataError(f"{artifact_dir.parent.name}: its parent {asset} {fingerprint} is not at {path}: rebuild it "
                        f"(select '*{artifact_dir.parent.name}')")
    return path


def view_splits(formatted_dir: Path, view: str) -> dict:
    """{split: Dataset} of a written view; {} when the view was not written."""
    from datasets import load_from_disk
    return dict(load_from_disk(formatted_dir / view)) if (formatted_dir / view).is_dir() else {}


def answers_by_row(clean_data: Path, sft_view_from: str, wanted: set[str] | None = None) -> dict[str, list[str]]:
    """row_id -> the answers its SFT row is trained on, in order, as the chat template is given them: an SFT row's
    assistant turns and tool calls; a pair's chosen answer or a desirable KTO answer where the view is made of
    those. Of the `wanted` rows only where given (the rows a check decodes: not a dict of the whole corpus)."""
    answers = {}
    rows = (r for batch in table_batches(clean_data, "rows") for r in batch.to_pylist()) if wanted is None \
        else rows_with_ids(clean_data, "rows", wanted)
    for row in rows:
        messages = json.loads(row["messages"])
        trained = [i for i, m in enumerate(messages) if m["role"] in TRAINED_ROLES]
        rendered = chat_messages(messages)
        turns = [rendered[i]["content"] for i in trained]  # a multi-turn prompt's earlier answers are trained too
        if sft_view_from == "sft" and row["kind"] == "sft":
            answers[row["row_id"]] = turns
        elif sft_view_from == "preference" and row["kind"] == "preference":
            answers[row["row_id"]] = [*turns, row["chosen"]]
        elif sft_view_from == "kto" and row["kind"] == "kto" and row["label"] == "true":
            answers[row["row_id"]] = turns  # its last message is the answer
    return answers


def spans(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of trained (not ignored) label positions."""
    found, start = [], None
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            found.append((start, i))
            start = None
    return found


SENTINEL = "tuneline answer sentinel"


def answer_markup(tokenizer) -> tuple[str, str]:
    """What the chat template writes around an answer inside its trained span (before it, after it), read from
    rendering a one-turn conversation whose answer is a sentinel: e.g. ("", "<|im_end|>\\n") for Qwen's."""
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": SENTINEL}]
    prefix = tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    before, _, after = full[len(prefix):].partition(SENTINEL)
    return before, after


def span_matches(decoded: str, answer: str, markup: tuple[str, str], cut: bool, cut_as_text: bool,
                 last: bool = True) -> bool:
    """A trained span is its answer with the template's markup around it (a template that trims the answer or
    writes less around an earlier turn gives a shorter span, never a longer one); where the row was cut at
    cutoff_len (`cut`), a non-empty beginning of that; where the answer was cut as text before it was rendered
    (`cut_as_text`: a pair's prompt and chosen answer), the markup around a beginning of the answer, non-empty for
    the last answer (an earlier turn of a cut prompt may be cut to nothing: dpo_en_demo's long conversations)."""
    before, after = markup
    text = decoded.rstrip("\ufffd")  # a token cut inside a character
    if answer.strip() in text and len(text) <= len(before) + len(answer) + len(after):
        return True
    if cut and text.strip() and any((before + a + after).startswith(text) for a in (answer, answer.strip())):
        return True
    middle = text[len(before):len(text) - len(after)] if text.startswith(before) and text.endswith(after) else ""
    return cut_as_text and (bool(middle.strip()) or not last) and answer.startswith(middle)


def decoded_steps(sft_splits: dict) -> dict[str, int]:
    """split -> every how many rows one is decoded (up to DECODED_PER_SPLIT rows per split, evenly spaced)."""
    return {split: max(1, -(-len(dataset) // DECODED_PER_SPLIT)) for split, dataset in sft_splits.items()}


def decoded_row_ids(sft_splits: dict) -> set[str]:
    """The row_ids of the rows label_problems decodes: the only rows whose answers it needs."""
    steps = decoded_steps(sft_splits)
    return {row_id for split, dataset in sft_splits.items()
            for row_id in dataset.select(range(0, len(dataset), steps[split]))["row_id"]}


def label_problems(sft_splits: dict, answers: dict[str, list[str]], tokenizer, cutoff_len: int,
                   answers_cut_as_text: bool) -> tuple[int, int, list[str]]:
    """Every written SFT row: labels as long as input_ids, at least one trained token, each trained label equal to
    the input token at its position; up to DECODED_PER_SPLIT rows per split: each run of trained tokens decoded
    and compared with that row's answer. Returns (rows, rows decoded, problems, one per row). The checks every
    row gets run on Arrow batches; a row is read as Python only when it is decoded or one of them failed."""
    rows = decoded = 0
    problems, markup = [], answer_markup(tokenizer)
    steps = decoded_steps(sft_splits)
    for split, dataset in sft_splits.items():
        step = steps[split]
        for start, batch in arrow_batches(dataset):
            read = sorted({*flagged_rows(batch), *range(-start % step, batch.num_rows, step)})
            for i in read:
                row = batch.slice(i, 1).to_pylist()[0]
                problem = row_problem(row, answers, tokenizer, markup, cutoff_len, answers_cut_as_text,
                                      (start + i) % step == 0)
                if problem:
                    problems.append(f"{split} {row['row_id']}: {problem}")
            rows += batch.num_rows
        decoded += -(-len(dataset) // step)
    return rows, decoded, problems


CHECKED_ROWS = 10_000  # rows of a view read at a time for the checks every row gets


def arrow_batches(dataset):
    """(index of its first row, Arrow table) per CHECKED_ROWS rows of a written view."""
    for start in range(0, len(dataset), CHECKED_ROWS):
        yield start, dataset.with_format("arrow")[start:start + CHECKED_ROWS]


def flagged_rows(batch: pa.Table) -> list[int]:
    """Indices of the rows of `batch` that fail a check every row gets (row_problem says which): labels not as
    long as input_ids, no trained token, a trained label that is not its input token."""
    ids, labels = (batch.column(c).combine_chunks() for c in ("input_ids", "labels"))
    uneven = pc.not_equal(pc.list_value_length(ids), pc.list_value_length(labels)).to_numpy(zero_copy_only=False)
    even = np.flatnonzero(~uneven)
    ids, labels = ids.take(even), labels.take(even)
    flat_labels, flat_ids = labels.flatten().to_numpy(), ids.flatten().to_numpy()
    owner = pc.list_parent_indices(labels).to_numpy()
    trained = flat_labels != IGNORE
    untrained = np.bincount(owner[trained], minlength=len(even)) == 0
    wrong = np.zeros(len(even), bool)
    wrong[owner[trained & (flat_labels != flat_ids)]] = True
    return sorted({*np.flatnonzero(uneven).tolist(), *even[untrained | wrong].tolist()})


def row_problem(row: dict, answers: dict[str, list[str]], tokenizer, markup: tuple[str, str], cutoff_len: int,
                answers_cut_as_text: bool, decode: bool) -> str | None:
    ids, labels = row["input_ids"], row["labels"]
    if len(labels) != len(ids):
        return f"{len(labels)} labels for {len(ids)} input_ids"
    runs = spans(labels)
    if not runs:
        return f"no label token ({len(ids)} tokens, all labels {IGNORE})"
    wrong = next((i for s, e in runs for i in range(s, e) if labels[i] != ids[i]), None)
    if wrong is not None:
        return f"label {labels[wrong]} at position {wrong} is not its input token {ids[wrong]}"
    if not decode:
        return None
    expected = answers.get(row["row_id"])
    if expected is None:
        return "no such row among clean_data's rows"
    cut = len(ids) >= cutoff_len  # truncation spends the whole budget (engine/data/format.py infer_seqlen)
    if len(runs) > len(expected) or (len(runs) < len(expected) and not cut):
        return f"{len(runs)} trained spans for {len(expected)} answers"
    for k, (start, end) in enumerate(runs):
        text = tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not span_matches(text, expected[k], markup, cut, answers_cut_as_text, last=k == len(runs) - 1):
            return f"answer {k} decodes to {text[:40]!r}, expected {expected[k][:40]!r}"
    return None


def sft_lengths(sft_splits: dict, cutoff_len: int) -> tuple[int, int, int]:
    """Every written SFT row's number of input_ids (the Arrow column's list lengths, a batch at a time): (rows,
    longest, rows over cutoff_len)."""
    rows = longest = over = 0
    for dataset in sft_splits.values():
        for _, batch in arrow_batches(dataset):
            lengths = pc.list_value_length(batch.column("input_ids"))
            rows, longest = rows + len(lengths), max(longest, pc.max(lengths).as_py() or 0)
            over += pc.sum(pc.greater(lengths, cutoff_len)).as_py() or 0
    return rows, longest, over


def pair_lengths_sampled(splits: dict, answer_columns: tuple[str, ...], tokenizer) -> tuple[int, int, list[int]]:
    """A preference or KTO view's rows, up to DECODED_PER_SPLIT per split evenly spaced, measured as TRL's trainers
    tokenize the written rows: each prompt with each answer, rendered whole. Returns (rows, rows measured,
    lengths)."""
    rows, lengths = 0, []
    for dataset in splits.values():
        rows += len(dataset)
        step = max(1, -(-len(dataset) // DECODED_PER_SPLIT))
        for row in dataset.select(range(0, len(dataset), step)):
            lengths += [conversation_length(tokenizer, [*row["prompt"], *row[column]])
                        for column in answer_columns]
    return rows, len(lengths) // len(answer_columns), lengths


def eval_rows(formatted_dir: Path, view: str) -> int:
    """The rows of a view's written eval split (0 when the view was not written)."""
    return len(view_splits(formatted_dir, view).get("eval", []))
