"""formatted_data's fast paths give what the straightforward code gives: ChatRenderer renders as
tokenizer.apply_chat_template does, and format_batch's batched SFT ids, pair lengths and derived SFT rows equal
tokenize_sft / pair_lengths (one apply_chat_template and one tokenizer call per piece), on several chat templates:
ChatML with tools (the tiny model's and the bench tokenizer's), a default system prompt, special-token variables,
a template that raises on unknown roles, and a {default, tool_use} pair."""

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from engine.data.format import (
    ChatRenderer, FormatSettings, chat_messages, format_batch, pair_lengths, reference_render, tokenize_sft, tool_list,
)
from engine.data.worker_tokenizer import WorkerTokenizer
from engine.models.load import CHATML_TEMPLATE, load_tokenizer

from test_format_parallel import TOOLS, generated_rows

SIMPLE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEMPLATES = {
    "chatml_tools": CHATML_TEMPLATE,
    "default_system": ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant."
                       "<|im_end|>\\n' }}{% endif %}" + SIMPLE),
    "special_tokens": ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
                       "m['content'] | trim + eos_token }}{% endfor %}{% if add_generation_prompt %}"
                       "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "raises": ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
               "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% elif m['role'] == 'tool' %}"
               "{{ '[TOOL_RESULTS] ' + m['content'] + '[/TOOL_RESULTS]' }}{% elif m['role'] == 'system' %}"
               "{{ m['content'] + '\\n\\n' }}{% else %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
               "{% endfor %}"),
    "default_and_tool_use": {"default": SIMPLE, "tool_use": CHATML_TEMPLATE},
}


@pytest.fixture(params=sorted(TEMPLATES))
def tokenizer(request, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = copy.deepcopy(TEMPLATES[request.param])
    return tok


def conversations():
    for row in generated_rows():
        messages = chat_messages(json.loads(row["messages"]))
        yield messages, tool_list(row["tools"])
    yield [{"role": "user", "content": "hi"}], TOOLS


def test_the_renderer_renders_as_apply_chat_template(tokenizer):
    fast, reference = ChatRenderer(tokenizer), reference_render(tokenizer)
    for messages, tools in conversations():
        for k in range(1, len(messages) + 1):
            for generation in (False, True):
                assert fast(messages[:k], tools, generation) == reference(messages[:k], tools, generation)
    with pytest.raises(ValueError):
        fast([], None)


def test_the_renderer_raises_where_the_template_does(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = TEMPLATES["raises"]
    with pytest.raises(Exception, match="unknown role robot"):
        ChatRenderer(tok)([{"role": "robot", "content": "x"}])


def test_format_batch_equals_the_row_by_row_reference(tokenizer):
    """Every SFT row's ids and labels are tokenize_sft's, every preference/KTO row's length is pair_lengths', and
    the SFT rows derived from preference/KTO rows are tokenize_sft's of prompt + chosen answer."""
    rows = generated_rows()
    for derive in (False, True):
        batch_rows = rows if not derive else [r for r in rows if r["kind"] != "sft"]
        settings = FormatSettings(tokenizer, 4096, "truncate", derive)
        batch = format_batch(batch_rows, ["train"] * len(batch_rows), {}, settings)
        by_id = {r["row_id"]: r for r in batch_rows}
        for view in (("derived",) if derive else ("sft",)):
            table = batch.tables[(view, "train")].to_pylist()
            assert len(table) > 0
            for record in table:
                row = by_id[record["row_id"]]
                messages = json.loads(row["messages"])
                if derive:
                    messages = messages if row["kind"] == "kto" else [*messages, {"role": "assistant",
                                                                                 "content": row["chosen"]}]
                expected = tokenize_sft(tokenizer, messages, tool_list(row["tools"]), 4096)
                assert (record["input_ids"], record["labels"]) == expected, record["row_id"]
        lengths = dict(zip((p["row_id"] for p in batch.provenance), batch.lengths, strict=True))
        for row in batch_rows:
            if row["kind"] == "sft":
                continue
            messages = json.loads(row["messages"])
            prompt, answers = ((messages[:-1], messages[-1:]) if row["kind"] == "kto" else
                               (messages, [{"role": "assistant", "content": row[k]} for k in ("chosen", "rejected")]))
            assert lengths[row["row_id"]] == max(pair_lengths(tokenizer, prompt, answers, tool_list(row["tools"])))


def test_a_worker_formats_with_the_shipped_tokenizer_as_with_the_whole_one(tokenizer):
    """FormatSettings pickled for a pool worker carry a WorkerTokenizer (backend, templates, special tokens; no
    transformers tokenizer class, no torch, until an attribute it lacks is asked for): the batch it formats is the
    one the whole tokenizer formats, on every template, rows cut or not; rows that fit never need the whole one."""
    rows = generated_rows()
    splits = ["train", "eval"] * (len(rows) // 2) + ["train"] * (len(rows) % 2)
    for cutoff_len in (4096, 300):  # 300: preference pairs cut (the whole tokenizer's apply_chat_template)
        settings = FormatSettings(tokenizer, cutoff_len, "truncate", False)
        shipped = pickle.loads(pickle.dumps(settings))
        assert isinstance(shipped.tokenizer, WorkerTokenizer) and "whole" not in vars(shipped.tokenizer)
        ours, theirs = (format_batch(rows, splits, {3: "leak"}, s) for s in (settings, shipped))
        assert {k: t.to_pylist() for k, t in ours.tables.items()} == \
            {k: t.to_pylist() for k, t in theirs.tables.items()}
        assert (ours.quarantine, ours.provenance, ours.lengths, ours.truncated, ours.tools_dropped) == \
            (theirs.quarantine, theirs.provenance, theirs.lengths, theirs.truncated, theirs.tools_dropped)
        if cutoff_len == 4096:
            assert ours.truncated == 0 and "whole" not in vars(shipped.tokenizer)
        else:
            assert ours.truncated > 0 and "whole" in vars(shipped.tokenizer)
    assert shipped.tokenizer.decode([5, 6]) == tokenizer.decode([5, 6])  # anything else: the whole tokenizer's


def test_a_copy_of_format_settings_keeps_its_tokenizer(tokenizer):
    """Only pickling ships the tokenizer as a WorkerTokenizer: copy.copy and deepcopy (which would otherwise go
    through the same __reduce__) keep the tokenizer's own class."""
    settings = FormatSettings(tokenizer, 300, "truncate", False, val_size=0.1)
    shallow, deep = copy.copy(settings), copy.deepcopy(settings)
    assert shallow == settings and shallow.tokenizer is tokenizer
    assert type(deep.tokenizer) is type(tokenizer) and deep.val_size == 0.1
    assert not isinstance(pickle.loads(pickle.dumps(settings)).tokenizer, type(tokenizer))


def test_a_shipped_tokenizer_without_a_template_raises_transformers_error(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = None
    shipped = pickle.loads(pickle.dumps(FormatSettings(tok, 300, "truncate", False))).tokenizer
    with pytest.raises(ValueError, match="chat_template is not set"):
        ChatRenderer(shipped)([{"role": "user", "content": "hi"}])


def test_a_worker_formats_rows_without_importing_torch(tiny_model_dir, tmp_path):
    """What a spawned worker does with FormatSettings, in a fresh interpreter: rows that fit are formatted without
    transformers' tokenizer classes, so torch is never imported (a second of every worker's start-up)."""
    rows = generated_rows()
    job = tmp_path / "job.pickle"
    job.write_bytes(pickle.dumps((FormatSettings(load_tokenizer(tiny_model_dir), 4096, "truncate", False), rows)))
    code = ("import pickle, sys; from engine.data.format import format_batch; "
            "settings, rows = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "batch = format_batch(rows, ['train'] * len(rows), {}, settings); "
            "print(len(batch.provenance), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(rows)), "False"]
