"""Formatting: chat-template rendering, tokenization with the prompt masked, seeded train/eval split.

The SFT view holds input_ids and labels (-100 on every non-assistant token), tokenized turn by
turn as LLaMA-Factory does, so the prompt tokens are exactly those the model sees when served.
The preference view holds conversational prompt/chosen/rejected for TRL's reward and DPO trainers.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from datasets import Features, List, Value

from engine.runtime.pool import OrderedPool, pool_state, worker_count
from engine.runtime.progress import Progress
from engine.data.clean import dedup_text
from engine.data.constants import DEFAULT_NUM_PERM, DEFAULT_SHINGLE, IGNORE
from engine.data.dedup import clusters_of_signatures, in_memory_bytes, near_duplicate_clusters
from engine.data.minhash import signatures
from engine.data.split import split_of
from engine.data.worker_tokenizer import WorkerTokenizer, fast_backend, shippable
from engine.errors import DataError

if TYPE_CHECKING:
    from datasets import DatasetDict
    from engine.stage import StageRun

TRAINED_ROLES = ("assistant", "function_call")  # as LLaMA-Factory: the model learns its answers and its tool calls
MESSAGES = List({"role": Value("string"), "content": Value("string")})
VIEW_FEATURES = {
    "sft": Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")), "row_id": Value("string")}),
    "preference": Features({"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "row_id": Value("string")}),
    "kto": Features({"prompt": MESSAGES, "completion": MESSAGES, "label": Value("bool"), "row_id": Value("string")}),
}
# every recipe trains SFT, and merge and evaluation read its eval split. The preference and KTO views are written
# when both splits have rows; reward_model and dpo_adapter say so when they run and theirs is absent. (Kept here,
# not read from the recipe's stages: formatted_data's fingerprint then does not change with them.)
REQUIRED_VIEWS = ("sft",)
BATCH_ROWS = 1000  # rows a worker formats at a time: its tokenizer call covers all their pieces
SPLIT_COLUMNS = ["source", "row_id", "content_hash", "view", "split"]  # splits-*.parquet: where every row went
WRITE_ROWS = 1000  # rows of splits and quarantine held before they are written: a row group each
VIEWS_FILE = "views.json"  # where the SFT view's rows come from: "sft" rows, or "preference"/"kto" rows' chosen answers


def sft_view_source(formatted_dir: Path) -> str:
    """"sft" when the SFT view holds SFT rows; "preference" or "kto" when, the data holding none, it holds those
    rows' prompts with their chosen (desirable) answers."""
    path = formatted_dir / VIEWS_FILE
    return json.loads(path.read_text())["sft_view_from"] if path.is_file() else "sft"


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


def reference_render(tokenizer):
    """apply_chat_template(tokenize=False) itself: the rendering ChatRenderer must equal."""
    def render(messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                             tokenize=False)
    return render


class ChatRenderer:
    """tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=..., tokenize=False) without its
    per-call overhead, for one batch: the template transformers picks (get_chat_template) compiled by transformers'
    own (cached) compiler and rendered with the same variables: the special tokens, tools, documents=None.
    Written by hand because transformers renders only through apply_chat_template, whose argument checks and
    special_tokens_map rebuild cost as much as the rendering on short rows; tests/test_format_render.py holds it to
    apply_chat_template on several templates."""

    def __init__(self, tokenizer):
        from transformers.utils.chat_template_utils import _compile_jinja_template
        self.tokenizer, self.compile = tokenizer, _compile_jinja_template
        self.variables = dict(tokenizer.special_tokens_map)
        self.templates: dict[bool, tuple] = {}  # {with tools: (compiled template, the variables every call shares)}

    def __call__(self, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False) -> str:
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        if tools is not None and not all(isinstance(tool, dict) for tool in tools):
            return reference_render(self.tokenizer)(messages, tools, add_generation_prompt)  # its own checks
        key = tools is not None
        if key not in self.templates:
            template = self.compile(self.tokenizer.get_chat_template(None, tools))
            self.templates[key] = template, {**template.globals, "documents": None, **self.variables}
        template, constants = self.templates[key]
        # jinja2's Template.render, its globals merged once per template instead of once per call
        context = template.new_context({**constants, "messages": messages, "tools": None if tools is None else
                                        list(tools), "add_generation_prompt": add_generation_prompt}, shared=True)
        try:
            return template.environment.concat(template.root_render_func(context))
        except Exception:
            return template.environment.handle_exception()


def encode_pieces(tokenizer, texts: list[str]) -> list[list[int]]:
    """tokenizer(texts, add_special_tokens=False)["input_ids"]: with a fast tokenizer, its backend's encode_batch_fast
    (no offsets) read for the ids alone, with the same truncation/padding (none) and special-token settings the
    call sets, instead of converting every encoding to a dict of lists."""
    backend = fast_backend(tokenizer)
    if not texts:
        return []
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    # what set_truncation_and_padding does for no padding and no truncation (a worker's tokenizer has the backend only)
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    if backend.encode_special_tokens != tokenizer.split_special_tokens:
        backend.encode_special_tokens = tokenizer.split_special_tokens
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def assistant_segments(tokenizer, messages: list[dict], tools: list | None = None,
                       render=None) -> list[tuple[str, bool]]:
    """Rendered text split into (segment, is_trained) pieces, in order: answers and tool calls are trained.
    `render`: a ChatRenderer (the same text, faster), else apply_chat_template."""
    render = render or reference_render(tokenizer)
    pieces, done = [], ""
    trained = [m["role"] in TRAINED_ROLES for m in messages]
    messages = chat_messages(messages)
    for k in range(len(messages)):
        if not trained[k]:
            continue
        prefix = render(messages[:k], tools, add_generation_prompt=True)
        full = render(messages[: k + 1], tools)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise TemplateMismatch("the chat template does not render conversations as growing prefixes")
        pieces += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    return pieces


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's budget split (data/processor/processor_utils.py): how many prompt and answer tokens
    stay when a (prompt, answer) pair must fit `cutoff_len`. A short answer is kept whole and the prompt cut;
    a short prompt is kept whole and the answer cut; otherwise both are cut in proportion."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def sft_pairs(tokenizer, messages: list[dict], tools: list | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per trained turn, in order: the rendered conversation, tokenized piece by piece."""
    pieces = assistant_segments(tokenizer, messages, tools)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in pieces]
    return list(zip(ids[0::2], ids[1::2], strict=True))


def no_answer(labels: list[int]) -> bool:
    """Every label is IGNORE: no token of the row is trained (list.count: no Python loop over the labels)."""
    return labels.count(IGNORE) == len(labels)


def truncate_pairs(pairs: list[tuple[list[int], list[int]]], cutoff_len: int | None
                   ) -> tuple[list[int], list[int], bool]:
    """input_ids and labels from (prompt, answer) pairs, cut to `cutoff_len` turn by turn as LLaMA-Factory's
    supervised processor does: each turn gets infer_seqlen's split of what is left, its prompt and answer keep
    their beginnings, and turns after the budget is spent are dropped. Returns (input_ids, labels, truncated)."""
    input_ids, labels, total, truncated = [], [], 0, False
    for source, target in pairs:
        if cutoff_len is not None:
            if total >= cutoff_len:
                truncated = True
                break
            source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - total)
            truncated |= source_len < len(source) or target_len < len(target)
            source, target = source[:source_len], target[:target_len]
        input_ids += source + target
        labels += [IGNORE] * len(source) + target
        total += len(source) + len(target)
    return input_ids, labels, truncated


def tokenize_sft(tokenizer, messages: list[dict], tools: list | None = None,
                 cutoff_len: int | None = None) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 on every prompt token); cut to `cutoff_len` as LLaMA-Factory cuts when given."""
    input_ids, labels, _ = truncate_pairs(sft_pairs(tokenizer, messages, tools), cutoff_len)
    return input_ids, labels


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def cut_text(tokenizer, text: str, max_tokens: int) -> str:
    """The longest beginning of `text` that is at most `max_tokens` tokens (measured again after decoding)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    keep = max(max_tokens, 0)
    while keep > 0:
        piece = tokenizer.decode(ids[:keep], skip_special_tokens=False)
        if count_tokens(tokenizer, piece) <= max_tokens and text.startswith(piece):
            return piece
        keep -= 1
    return ""


def tool_list(tools_json: str | None) -> list | None:
    """A row's tools as the list of function schemas a chat template iterates (one schema becomes a list of one)."""
    if not tools_json:
        return None
    tools = json.loads(tools_json)
    return [tools] if isinstance(tools, dict) else tools


def template_drops_tools(tokenizer, messages: list[dict], tools: list, render=None) -> bool:
    """True when the chat template renders the conversation the same with and without its tools: the model would
    be trained to call functions it was never shown. `render`: a ChatRenderer, else apply_chat_template."""
    render = render or reference_render(tokenizer)
    rendered = [render(chat_messages(messages), t) for t in (tools, None)]
    return rendered[0] == rendered[1]


def prompt_length(tokenizer, messages: list[dict], tools: list | None = None) -> int:
    """The prompt's tokens as a preference trainer tokenizes it: rendered with the generation prompt."""
    return len(tokenizer.apply_chat_template(chat_messages(messages), tools=tools, add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"])


def conversation_length(tokenizer, messages: list[dict], tools: list | None = None) -> int:
    """A whole conversation's tokens as TRL's reward, DPO and KTO trainers tokenize prompt + answer: one rendering,
    the template's end-of-turn markup included (Qwen's `<|im_end|>` and the newline after it)."""
    return len(tokenizer.apply_chat_template(chat_messages(messages), tools=tools, tokenize=True,
                                             return_dict=True)["input_ids"])


def pair_lengths(tokenizer, prompt: list[dict], answers: list[dict], tools: list | None = None) -> list[int]:
    """Each prompt + answer conversation's length in tokens, as the trainer that reads the row will see it."""
    return [conversation_length(tokenizer, [*prompt, answer], tools) for answer in answers]


def cut_prompt(tokenizer, messages: list[dict], budget: int, tools: list | None = None) -> list[dict] | None:
    """The prompt with its end cut until its rendering is at most `budget` tokens, as LLaMA-Factory keeps a
    prompt's beginning; the template's markup stays whole. None when the markup alone is over the budget."""
    messages = [dict(m) for m in messages]
    for i in range(len(messages) - 1, -1, -1):
        excess = prompt_length(tokenizer, messages, tools) - budget
        if excess <= 0:
            return messages
        content = messages[i]["content"]
        messages[i]["content"] = cut_text(tokenizer, content, max(count_tokens(tokenizer, content) - excess, 0))
    return messages if prompt_length(tokenizer, messages, tools) <= budget else None


def truncate_pair_row(tokenizer, prompt: list[dict], answers: list[dict], cutoff_len: int, tools: list | None = None,
                      fulls: list[int] | None = None) -> tuple[list[dict], list[dict], list[int]] | None:
    """A preference (or KTO) row cut as LLaMA-Factory's pairwise processor cuts it: infer_seqlen over the prompt
    and the longest answer (its end-of-turn markup included); the prompt keeps its beginning, every answer its
    first target_len tokens. Measured again as the trainer tokenizes the whole conversation, so that every answer
    with its prompt fits `cutoff_len` (TRL's RewardTrainer drops a pair that does not; DPO and KTO would cut it).
    `fulls`: pair_lengths of the uncut row, where the caller has them. Returns (prompt, answers, their pair_lengths);
    None when the row cannot fit (the template's markup alone is over cutoff_len, or no answer text would stay)."""
    source = prompt_length(tokenizer, prompt, tools)
    fulls = fulls or pair_lengths(tokenizer, prompt, answers, tools)
    source_len, target_len = infer_seqlen(source, max(fulls) - source, cutoff_len)
    # LLaMA-Factory cuts token ids through the template's markup; here the prompt keeps its markup whole, so where
    # the markup alone is over the prompt's share, the prompt takes that much and the answers the rest
    # each answer keeps target_len tokens with its end-of-turn markup: the markup's share is what the rendering adds;
    # every answer keeps at least one token of its own (infer_seqlen can leave a long prompt's answers only markup)
    overheads = [full - source - count_tokens(tokenizer, a["content"]) for a, full in zip(answers, fulls)]
    if target_len <= max(overheads):
        source_len, target_len = cutoff_len - max(overheads) - 1, max(overheads) + 1
    markup = prompt_length(tokenizer, [{**m, "content": ""} for m in prompt], tools)
    if markup > source_len:
        source_len, target_len = markup, cutoff_len - markup
    cut = cut_prompt(tokenizer, prompt, source_len, tools)
    if cut is None:
        return None
    budgets = [target_len - overhead for overhead in overheads]
    cut_answers = [{**a, "content": cut_text(tokenizer, a["content"], b)} for a, b in zip(answers, budgets)]
    for _ in range(4):  # a cut can merge tokens across the boundary: shrink an answer by what is still over
        lengths = pair_lengths(tokenizer, cut, cut_answers, tools)
        if max(lengths) <= cutoff_len:
            break
        cut_answers = [{**a, "content": cut_text(tokenizer, a["content"],
                                                 count_tokens(tokenizer, a["content"]) - max(n - cutoff_len, 0))}
                       for a, n in zip(cut_answers, lengths)]
    else:
        return None
    if not all(a["content"].strip() for a in cut_answers):
        return None
    return cut, cut_answers, lengths


def contamination_signatures(rows: list[dict]) -> np.ndarray:
    """The MinHash signatures decontamination compares, one per row (a row's depends on its text alone, so batches
    can be signed on any process)."""
    texts = [contamination_text(row) for row in rows]
    return signatures(texts, DEFAULT_NUM_PERM, DEFAULT_SHINGLE)


def contaminated(rows: list[dict], splits: list[str], threshold: float,
                 sig: np.ndarray | None = None) -> dict[int, str]:
    """{index of a train row: detail} for every train row that near-duplicates an eval row; `sig`: the rows'
    contamination_signatures where the caller computed them."""
    sig = contamination_signatures(rows) if sig is None else sig
    is_eval = np.array([s == "eval" for s in splits], dtype=bool)
    return leaks_of(sig, is_eval, threshold, {i: rows[i]["row_id"] for i in np.flatnonzero(is_eval)})


def contamination_text(row: dict) -> str:
    """What decontamination compares of a row: its dedup text (as near_dedup's)."""
    return dedup_text({**row, "messages": json.loads(row["messages"])})


def eval_first(is_eval: np.ndarray) -> np.ndarray:
    """Row indexes, eval rows first: a cluster that holds one is rooted at it."""
    return np.concatenate([np.flatnonzero(is_eval), np.flatnonzero(~is_eval)]).astype(np.int64)


def eval_roots(clusters: list[tuple[int, int, float]], order: np.ndarray, evals: int) -> dict[int, tuple[int, float]]:
    """{train row: (its cluster's eval root, jaccard)} of clusters found over the rows in eval_first `order`."""
    return {int(order[member]): (int(order[root]), jaccard) for root, member, jaccard in clusters
            if root < evals <= member}


def leak_details(roots: dict[int, tuple[int, float]], eval_ids: dict[int, str]) -> dict[int, str]:
    """contaminated's dict: each leaking train row's detail, naming its eval root by row_id."""
    return {member: f"~{jaccard:.2f} Jaccard with eval row {eval_ids[root]}"
            for member, (root, jaccard) in roots.items()}


def leaks_of(sig: np.ndarray, is_eval: np.ndarray, threshold: float, eval_ids: dict[int, str]) -> dict[int, str]:
    """contaminated's dict from every row's signature, which rows are eval rows, and the eval rows' row_ids."""
    order = eval_first(is_eval)
    return leak_details(eval_roots(clusters_of_signatures(sig[order], threshold), order, int(is_eval.sum())),
                        eval_ids)


@dataclass(frozen=True)
class FormatSettings:
    """What formatting one row reads besides the row: the same for every batch and every worker (pickled for a
    worker, the tokenizer goes as a WorkerTokenizer: engine/data/worker_tokenizer.py)."""
    tokenizer: object
    cutoff_len: int
    overlength: str
    derive_sft: bool
    val_size: float = 0.0  # the split of a row: split_of(its content_hash, val_size, seed)
    seed: int = 0
    default_system: str | None = None  # with_default_system, for rows read from a table

    def __reduce__(self):
        tokenizer = self.tokenizer if isinstance(self.tokenizer, WorkerTokenizer) else shippable(self.tokenizer)
        return FormatSettings, (tokenizer, *(getattr(self, f.name) for f in fields(self)[1:]))

    def __copy__(self) -> "FormatSettings":  # copy.copy would go through __reduce__: a copy keeps its tokenizer
        return replace(self)

    def __deepcopy__(self, memo: dict) -> "FormatSettings":
        return replace(self, tokenizer=copy.deepcopy(self.tokenizer, memo))


@dataclass
class FormattedBatch:
    """One batch of rows formatted, in row order: the view records as Arrow tables {(view, split): table} (the SFT
    view derived from preference/KTO rows under view "derived"), and what the report and splits.parquet need."""
    tables: dict[tuple[str, str], pa.Table] = field(default_factory=dict)
    quarantine: list[dict] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    tools_dropped: int = 0
    without_labels: Counter = field(default_factory=Counter)  # {"sft"|"derived": SFT rows with no trained token}


def sft_table(records: list[tuple[list[int], list[int], str]]) -> pa.Table:
    """SFT records (input_ids, labels, row_id) as an Arrow table of the SFT view's schema, the token lists built
    from flat int32 buffers and offsets rather than from Python lists of lists."""
    offsets = np.zeros(len(records) + 1, dtype=np.int32)
    np.cumsum([len(ids) for ids, _, _ in records], out=offsets[1:])
    columns = {}
    for k, name in enumerate(("input_ids", "labels")):
        flat = np.fromiter(chain.from_iterable(r[k] for r in records), dtype=np.int32, count=int(offsets[-1]))
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    columns["row_id"] = pa.array([r[2] for r in records], pa.string())
    return pa.table(columns, schema=VIEW_FEATURES["sft"].arrow_schema)


def pair_of(row: dict, messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """A preference or KTO row's (prompt, answers): a KTO row's last message is its answer; a preference row's
    answers are its chosen and rejected ones."""
    if row["kind"] == "kto":
        return messages[:-1], [messages[-1]]
    return messages, [{"role": "assistant", "content": row[answer]} for answer in ("chosen", "rejected")]


def pair_lengths_batch(tokenizer, pairs: list[tuple[list[dict], list[dict], list | None]],
                       render: ChatRenderer | None = None) -> list[list[int]]:
    """pair_lengths of every (prompt, answers, tools), rendered with the ChatRenderer and tokenized in one call."""
    render = render or ChatRenderer(tokenizer)
    texts = [[render(chat_messages([*prompt, answer]), tools) for answer in answers]
             for prompt, answers, tools in pairs]
    ids = encode_pieces(tokenizer, [text for row in texts for text in row])
    out, at = [], 0
    for row in texts:
        out.append([len(x) for x in ids[at:at + len(row)]])
        at += len(row)
    return out


def tokenized_segments(tokenizer, conversations: list[tuple[list[dict], list | None]],
                       render: ChatRenderer | None = None) -> list[list[list[int]]]:
    """assistant_segments' pieces of every conversation tokenized, per conversation: one batched tokenizer call
    (the fast tokenizer's batch API) for all pieces of all conversations instead of one call per piece."""
    render = render or ChatRenderer(tokenizer)
    pieces = [[text for text, _ in assistant_segments(tokenizer, messages, tools, render)]
              for messages, tools in conversations]
    flat = [text for texts in pieces for text in texts]
    ids = encode_pieces(tokenizer, flat)
    out, start = [], 0
    for texts in pieces:
        out.append(ids[start:start + len(texts)])
        start += len(texts)
    return out


def format_batch(rows: list[dict], splits: list[str], leaks: dict[int, str], settings: FormatSettings
                 ) -> FormattedBatch:
    """Rows formatted as format_rows formats them; `leaks`: {index in `rows`: detail} of rows contaminating eval."""
    tokenizer, cutoff_len, overlength = settings.tokenizer, settings.cutoff_len, settings.overlength
    batch = FormattedBatch()
    records: dict[tuple[str, str], list] = {(v, s): [] for v in (*VIEW_FEATURES, "derived") for s in ("train", "eval")}
    render = ChatRenderer(tokenizer)
    parsed = [(json.loads(row["messages"]), tool_list(row.get("tools"))) if i not in leaks else (None, None)
              for i, row in enumerate(rows)]
    sft_at = [i for i, row in enumerate(rows) if i not in leaks and row["kind"] == "sft"]
    sft_ids = dict(zip(sft_at, tokenized_segments(tokenizer, [parsed[i] for i in sft_at], render), strict=True))
    pair_at = [i for i, row in enumerate(rows) if i not in leaks and row["kind"] != "sft"]
    pair_fulls = dict(zip(pair_at, pair_lengths_batch(tokenizer, [(*pair_of(rows[i], parsed[i][0]), parsed[i][1])
                                                                  for i in pair_at], render), strict=True))
    derived: list[tuple[str, str, list[dict], list | None]] = []  # (split, row_id, messages, tools), in row order

    def too_long(row: dict, length: int, why: str = "") -> None:
        batch.quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": "format",
                                 "reason": "exceeds_cutoff_len",
                                 "detail": f"{length} tokens > cutoff_len {cutoff_len}{why}"})

    for index, (row, split) in enumerate(zip(rows, splits, strict=True)):
        if index in leaks:
            batch.quarantine.append({"source": row["source"], "row_id": row["row_id"], "stage": "format",
                                     "reason": "contaminates_eval", "detail": leaks[index]})
            continue
        messages, tools = parsed[index]
        if tools and template_drops_tools(tokenizer, messages, tools, render):
            batch.tools_dropped += 1
        was_cut = False
        if row["kind"] == "sft":
            ids = sft_ids[index]
            pairs = list(zip(ids[0::2], ids[1::2], strict=True))
            full = sum(len(a) + len(b) for a, b in pairs)
            if full > cutoff_len and overlength == "drop":
                too_long(row, full)
                continue
            input_ids, labels, was_cut = truncate_pairs(pairs, cutoff_len)
            if no_answer(labels):
                too_long(row, full, "; no answer token is left after truncation")
                continue
            length = len(input_ids)
            records[("sft", split)].append((input_ids, labels, row["row_id"]))
        else:
            prompt, answers = pair_of(row, messages)
            fulls = pair_fulls[index]
            length = max(fulls)
            if length > cutoff_len:
                if overlength == "drop":
                    too_long(row, length)
                    continue
                cut = truncate_pair_row(tokenizer, prompt, answers, cutoff_len, tools, fulls)
                if cut is None:
                    too_long(row, length, "; the template's markup alone does not fit")
                    continue
                prompt, answers, cut_lengths = cut
                length, was_cut = max(cut_lengths), True
            if settings.derive_sft and (row["kind"] == "preference" or row["label"] == "true"):
                derived.append((split, row["row_id"], [*prompt, answers[0]], tools))
            if row["kind"] == "kto":
                record = {"prompt": chat_messages(prompt), "completion": chat_messages(answers),
                          "label": row["label"] == "true", "row_id": row["row_id"]}
            else:
                record = {"prompt": chat_messages(prompt), "chosen": answers[:1], "rejected": answers[1:],
                          "row_id": row["row_id"]}
            records[(row["kind"], split)].append(record)
        batch.truncated += was_cut
        batch.lengths.append(length)
        batch.provenance.append({"source": row["source"], "row_id": row["row_id"],
                                 "content_hash": row["content_hash"], "view": row["kind"], "split": split})
    # the SFT view of preference/KTO rows: tokenize_sft of each, its pieces tokenized with the batch's in one call
    for (split, row_id, _, _), ids in zip(derived, tokenized_segments(tokenizer, [d[2:] for d in derived], render),
                                          strict=True):
        input_ids, labels, _ = truncate_pairs(list(zip(ids[0::2], ids[1::2], strict=True)), cutoff_len)
        records[("derived", split)].append((input_ids, labels, row_id))
    for (view, split), found in records.items():
        if view in ("sft", "derived"):
            batch.without_labels[view] += sum(no_answer(labels) for _, labels, _ in found)
            batch.tables[(view, split)] = sft_table(found)
        else:
            batch.tables[(view, split)] = pa.Table.from_pylist(found, schema=VIEW_FEATURES[view].arrow_schema)
    return batch


def stage_pool(settings: FormatSettings, workers: int, jobs: int) -> OrderedPool:
    """The pool of `workers` processes (at most one a batch; this process alone for one batch) that decontamination's
    signatures and the formatting share, each receiving the settings (the tokenizer) once."""
    return OrderedPool(min(workers, jobs) if jobs > 1 else 1, settings)


def batch_rows_of(raw: list[dict] | pa.RecordBatch, settings: FormatSettings) -> list[dict]:
    """A batch as row dicts: a list as it is (its caller added the default system), an Arrow record batch (read
    from clean_data: converted where the work is done, on a worker) with the default system message added."""
    return raw if isinstance(raw, list) else with_default_system(raw.to_pylist(), settings.default_system)


def format_job(raw: list[dict] | pa.RecordBatch, leaks: dict[int, str], settings: FormatSettings,
               is_eval: np.ndarray | None = None) -> FormattedBatch:
    """format_batch of one batch as the source gave it; its rows' splits from `is_eval` (decontamination's pass
    computed them) or computed here. The cyclic garbage collector waits for the batch's end: the token lists it
    allocates would start collections that scan every live object."""
    paused = gc.isenabled()
    gc.disable()
    try:
        rows = batch_rows_of(raw, settings)
        splits = (splits_of(rows, settings.val_size, settings.seed) if is_eval is None
                  else ["eval" if e else "train" for e in is_eval.tolist()])
        return format_batch(rows, splits, leaks, settings)
    finally:
        if paused:
            gc.enable()


def signature_job(raw: list[dict] | pa.RecordBatch, settings: FormatSettings
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One batch's contamination_signatures, the positions of its eval rows and their row_ids."""
    rows = batch_rows_of(raw, settings)
    evals = [i for i, split in enumerate(splits_of(rows, settings.val_size, settings.seed)) if split == "eval"]
    return contamination_signatures(rows), np.array(evals, dtype=np.int64), [rows[i]["row_id"] for i in evals]


def _format_in_worker(raw, leaks: dict[int, str], is_eval: np.ndarray | None) -> FormattedBatch:
    return format_job(raw, leaks, pool_state(), is_eval)  # the pool's state: the settings


def _signatures_in_worker(raw) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return signature_job(raw, pool_state())


class RowSource:
    """formatted_data's input, read once per pass in batches: a list of row dicts (tests, the bench), or clean_data's
    rows table read a record batch at a time (TableRows), its rows made dicts, with the default system message
    added, by whichever process formats them (batch_rows_of)."""
    default_system: str | None = None

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def batches(self, batch_rows: int) -> Iterator[list[dict] | pa.RecordBatch]:
        yield from (self.rows[s:s + batch_rows] for s in range(0, len(self.rows), batch_rows))

    def columns(self, names: list[str], batch_rows: int) -> Iterator[dict[str, list]]:
        """Only `names` of every row, a batch at a time (a cheap pass)."""
        for batch in self.batches(batch_rows):
            yield {name: [row[name] for row in batch] for name in names}


class TableRows(RowSource):
    """Table `name` of an artifact folder (clean_data's `rows`), read in Arrow record batches."""

    def __init__(self, folder: Path, name: str, default_system: str | None = None):
        self.folder, self.name, self.default_system = folder, name, default_system

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        from engine.store.tables import table_batches
        yield from table_batches(self.folder, self.name, batch_rows=batch_rows)

    def columns(self, names: list[str], batch_rows: int) -> Iterator[dict[str, list]]:
        from engine.store.tables import table_batches
        for batch in table_batches(self.folder, self.name, names, batch_rows=max(batch_rows, 10_000)):
            yield batch.to_pydict()


class LengthStats:
    """The report's max, mean and histogram of formatted lengths, kept as running sums."""

    def __init__(self, cutoff_len: int, buckets: int = 8):
        self.width, self.counts = max(1, -(-cutoff_len // buckets)), np.zeros(buckets, dtype=np.int64)
        self.max, self.sum, self.n = 0, 0, 0

    def add(self, lengths: list[int]) -> None:
        if lengths:
            values = np.asarray(lengths, dtype=np.int64)
            self.counts += np.bincount(np.minimum(values // self.width, len(self.counts) - 1),
                                       minlength=len(self.counts))
            self.max, self.sum = max(self.max, int(values.max())), self.sum + int(values.sum())
            self.n += len(values)

    def histogram(self) -> list[tuple[str, int]]:
        return [(f"{i * self.width}-{(i + 1) * self.width - 1}", int(c)) for i, c in enumerate(self.counts)]


def length_histogram(lengths: list[int], cutoff_len: int, buckets: int = 8) -> list[tuple[str, int]]:
    stats = LengthStats(cutoff_len, buckets)
    stats.add(lengths)
    return stats.histogram()


def splits_of(batch: list[dict], val_size: float, seed: int) -> list[str]:
    return [split_of(row["content_hash"], val_size, seed) for row in batch]


def stream_leaks(source: RowSource, pool: OrderedPool, settings: FormatSettings, batch_rows: int, threshold: float,
                 rows: int, memory_gb: float | None = None, spill_dir: Path | None = None
                 ) -> tuple[dict[int, str], np.ndarray]:
    """contaminated's dict over the whole source, its signatures computed batch by batch on the pool into one array
    (num_perm uint32 a row); only the eval rows' row_ids are kept, for the details. Where that array would pass
    `memory_gb`, spilled_leaks finds the same dict through files under `spill_dir`. Returns (the dict, every row's
    is-eval flag: the split the format pass then reuses)."""
    # leaks_of reorders the signatures eval rows first: a second copy of the array beside clustering's own
    held = in_memory_bytes(rows, DEFAULT_NUM_PERM) + rows * 4 * DEFAULT_NUM_PERM
    if memory_gb is not None and held > memory_gb * 2 ** 30:
        return spilled_leaks(source, settings, batch_rows, threshold, memory_gb, spill_dir)
    sig = np.empty((rows, DEFAULT_NUM_PERM), dtype=np.uint32)
    is_eval = np.zeros(rows, dtype=bool)
    eval_ids: dict[int, str] = {}
    at = 0
    for found, evals, ids in pool.map(_signatures_in_worker, ((raw,) for raw in source.batches(batch_rows))):
        sig[at:at + len(found)] = found
        is_eval[at + evals] = True
        eval_ids.update(zip((at + evals).tolist(), ids, strict=True))
        at += len(found)
    return leaks_of(sig, is_eval, threshold, eval_ids), is_eval


def spilled_leaks(source: RowSource, settings: FormatSettings, batch_rows: int, threshold: float, memory_gb: float,
                  spill_dir: Path | None) -> tuple[dict[int, str], np.ndarray]:
    """stream_leaks' dict in bounded memory: the texts, eval rows first as leaks_of orders them, through
    near_duplicate_clusters' spilled partitions (the same clusters); then the roots' row_ids in one more pass."""
    is_eval = np.array([split_of(h, settings.val_size, settings.seed) == "eval"
                        for columns in source.columns(["content_hash"], batch_rows) for h in columns["content_hash"]],
                       dtype=bool)
    order = eval_first(is_eval)

    def texts(wanted: np.ndarray) -> Iterator[str]:
        at = 0
        for raw in source.batches(batch_rows):
            rows = batch_rows_of(raw, settings)
            mask, at = wanted[at:at + len(rows)], at + len(rows)
            yield from (contamination_text(row) for row, keep in zip(rows, mask) if keep)
    clusters = near_duplicate_clusters(chain(texts(is_eval), texts(~is_eval)), threshold, DEFAULT_NUM_PERM,
                                       DEFAULT_SHINGLE, memory_gb=memory_gb, spill_dir=spill_dir)
    roots = eval_roots(clusters, order, int(is_eval.sum()))
    wanted = {root for root, _ in roots.values()}
    ids, at = {}, 0
    for columns in source.columns(["row_id"], batch_rows) if wanted else ():
        ids |= {at + i: row_id for i, row_id in enumerate(columns["row_id"]) if at + i in wanted}
        at += len(columns["row_id"])
    return leak_details(roots, ids), is_eval


def format_rows(rows: list[dict] | RowSource, tokenizer, cutoff_len: int, val_size: float, seed: int, out: Path,
                decontamination_threshold: float | None = None,
                overlength: str = "truncate", workers: int = 1,
                batch_rows: int = BATCH_ROWS, quarantine_to: Path | None = None,
                memory_gb: float | None = None) -> tuple[list[dict], dict]:
    """Write `out/sft`, `out/preference` and, with KTO rows, `out/kto` (HF DatasetDicts with train/eval),
    and `out/splits-00000.parquet` (the split of every row).

    A row longer than cutoff_len is truncated as LLaMA-Factory truncates it (`overlength: truncate`, the
    recipe's data.overlength; counted in the report as `truncated`) or quarantined (`drop`, reason
    exceeds_cutoff_len). A row that cannot be cut to fit (the template's markup alone is longer, or no answer
    token would stay) is quarantined as exceeds_cutoff_len either way.

    The rows stream (a RowSource, read a batch at a time: a pass over kind and source, one for decontamination's
    signatures, one to format), are formatted in batches of `batch_rows` on `workers` processes, and each view is
    written as its rows come back (engine/data/view_writer.py): memory stays bounded, and the files are the same for
    any batch size and any number of workers.

    Returns (quarantined rows, report): the quarantine as a list, or, with `quarantine_to`, written there as the
    table `quarantine` and [] returned. Raises DataError when the SFT view's train or eval split would be empty;
    the preference and KTO views are written only when both of their splits have rows.
    """
    from engine.data.view_writer import DictWriter
    from engine.store.tables import QUARANTINE_COLUMNS, ShardWriter
    if overlength not in ("truncate", "drop"):
        raise ValueError(f"overlength must be 'truncate' or 'drop', got {overlength!r}")
    source = rows if isinstance(rows, RowSource) else RowSource(rows)
    kinds, rows_in, total = Counter(), Counter(), 0
    for columns in source.columns(["kind", "source"], batch_rows):
        kinds.update(columns["kind"])
        rows_in.update(columns["source"])
        total += len(columns["kind"])
    # without SFT rows (a DPO, reward or KTO dataset alone), the SFT view merge, quantization and evaluation read is
    # each pair's prompt with its chosen answer (a KTO row's, where it is desirable): what pref_ftx trains on
    derive_sft = not kinds["sft"]
    settings = FormatSettings(tokenizer, cutoff_len, overlength, derive_sft, val_size, seed, source.default_system)
    out.mkdir(parents=True, exist_ok=True)
    writers = {view: DictWriter(out / view, VIEW_FEATURES[view]) for view in VIEW_FEATURES}
    counts, rows_out, stats = Counter(), Counter(), LengthStats(cutoff_len)
    truncated = tools_dropped = exceeds = 0
    without_labels: Counter = Counter()
    quarantine: list[dict] = []
    quarantine_writer = (ShardWriter(quarantine_to, "quarantine", QUARANTINE_COLUMNS, batch_rows=WRITE_ROWS)
                         if quarantine_to else None)
    tokenizing = Progress("tokenizing", total=total, stage="formatted_data")
    with stage_pool(settings, workers, -(-total // batch_rows)) as pool, \
            ShardWriter(out, "splits", SPLIT_COLUMNS, batch_rows=WRITE_ROWS) as splits_writer:
        # spilled signatures, if any, go to a temporary directory in `out`, gone when they are read
        leaks, is_eval = (stream_leaks(source, pool, settings, batch_rows, decontamination_threshold, total,
                                       memory_gb, out) if decontamination_threshold else ({}, None))

        def jobs():
            at = 0
            for raw in source.batches(batch_rows):
                yield (raw, {i - at: leaks[i] for i in range(at, at + len(raw)) if i in leaks},
                       None if is_eval is None else is_eval[at:at + len(raw)])
                at += len(raw)
        for batch in tokenizing.each(pool.map(_format_in_worker, jobs()),
                                     n=lambda b: len(b.provenance) + len(b.quarantine)):
            for (view, split), table in batch.tables.items():
                writers["sft" if view == "derived" else view].write(split, table)
            for row in batch.quarantine:
                exceeds += row["reason"] == "exceeds_cutoff_len"
                if quarantine_writer:
                    quarantine_writer.add(row)
                else:
                    quarantine.append(row)
            splits_writer.add_all(batch.provenance)
            counts.update((p["view"], p["split"]) for p in batch.provenance)
            rows_out.update(p["source"] for p in batch.provenance)
            stats.add(batch.lengths)
            truncated, tools_dropped = truncated + batch.truncated, tools_dropped + batch.tools_dropped
            without_labels += batch.without_labels
    if quarantine_writer:
        quarantine_writer.close()
    sft_view_from = "sft"
    if derive_sft and writers["sft"].rows("train") + writers["sft"].rows("eval"):
        sft_view_from = "preference" if kinds["preference"] else "kto"
    (out / VIEWS_FILE).write_text(json.dumps({"sft_view_from": sft_view_from}))
    for view, writer in writers.items():
        writer.close()
        if view not in REQUIRED_VIEWS and not all(writer.rows(s) for s in writer.splits):
            shutil.rmtree(writer.folder, ignore_errors=True)
            continue  # only a stage that trains on it needs it (engine.data.format.require_view)
        for split in writer.splits:
            if not writer.rows(split):
                raise DataError(f"no {view} rows reached the {split} split: register {view} data "
                                "(instruction data) or adjust data.val_size")
    report = {
        "sft_train": counts[("sft", "train")], "sft_eval": counts[("sft", "eval")],
        "preference_train": counts[("preference", "train")], "preference_eval": counts[("preference", "eval")],
        "kto_train": counts[("kto", "train")], "kto_eval": counts[("kto", "eval")],
        "max_tokens": stats.max, "mean_tokens": round(stats.sum / max(stats.n, 1), 1),
        "cutoff_len": cutoff_len, "overlength": overlength, "truncated": truncated,
        "tools_dropped_by_template": tools_dropped,
        "exceeds_cutoff_len": exceeds,
        "contaminates_eval": len(leaks), "length_histogram": stats.histogram(),
        "rows_in_by_source": dict(rows_in),
        "rows_out_by_source": dict(rows_out),
        "sft_view_from": sft_view_from,
        "sft_rows_without_labels": without_labels["sft" if sft_view_from == "sft" else "derived"],
    }
    return quarantine, report


def require_view(formatted_dir: Path, view: str, stage: str) -> Path:
    """The formatted data's `view` that `stage` trains on, or a DataError saying how to get it or turn it off."""
    if not (formatted_dir / view).is_dir():
        data = {"preference": "ranking data (ranking: true)", "kto": "KTO data (a kto_tag column)"}[view]
        switch = "rm" if stage == "reward_model" else "dpo (or kto)"
        raise DataError(f"{stage}: no {view} rows reached both the train and eval splits: register {data} in "
                        f"data.dataset, adjust data.val_size, or take {switch} out of the recipe's stages")
    return formatted_dir / view


def read_view(formatted_dir: Path, view: str, stage: str | None = None) -> DatasetDict:
    """A formatted view (its train and eval splits) for a later stage to read; `stage` names the stage that needs an
    optional view (require_view). Caching is off for the process: the maps trainers run on it (TRL's tokenization,
    its reference log-probs) write their cache files to a temporary directory, never into formatted_data's
    published artifact, which other runs share."""
    from datasets import disable_caching, load_from_disk
    disable_caching()
    return load_from_disk(require_view(formatted_dir, view, stage) if stage else formatted_dir / view)


def with_default_system(rows: list[dict], default_system: str | None) -> list[dict]:
    """LLaMA-Factory's default_system: every row without a system message of its own gets this one first, so the
    chat template's own default system prompt is rendered in none of them. Rows keep their content_hash (and so
    their split); None leaves the rows as they are."""
    if default_system is None:
        return rows
    out = []
    for row in rows:
        messages = json.loads(row["messages"])
        if not messages or messages[0]["role"] != "system":
            row = {**row, "messages": json.dumps([{"role": "system", "content": default_system}, *messages],
                                                 ensure_ascii=False)}
        out.append(row)
    return out


def format_clean_data(run: "StageRun") -> dict:
    """formatted_data's entry point: clean_data's rows rendered with the base model's chat template, tokenized,
    split; the views as HF datasets, the split of every row and the quarantine as Parquet, streamed (format_rows).
    Returns the report."""
    from engine.models.load import load_tokenizer, model_dir
    from engine.store.tables import table_rows
    from engine.data.templates import check_template
    data = run.recipe.data
    tokenizer = load_tokenizer(model_dir(run.inputs["base_model"]))
    check_template(tokenizer, data.template)
    source = TableRows(run.inputs["clean_data"], "rows", data.default_system)
    workers = worker_count(data.preprocessing_num_workers, table_rows(run.inputs["clean_data"], "rows"))
    _, report = format_rows(source, tokenizer, data.cutoff_len, data.val_size, data.seed, run.out,
                            data.decontamination_threshold, data.overlength, workers, quarantine_to=run.out,
                            memory_gb=data.memory_gb)
    return report
