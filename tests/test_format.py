import json

import pytest

from datasets import load_from_disk

from engine.data.format import IGNORE, format_rows, require_view, split_of, tokenize_sft
from engine.errors import DataError
from engine.models.load import load_tokenizer


def test_labels_cover_exactly_the_assistant_turns(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add. 1 + 2"},
                {"role": "assistant", "content": "3"}, {"role": "user", "content": "Add. 2 + 2"},
                {"role": "assistant", "content": "4"}]
    input_ids, labels = tokenize_sft(tokenizer, messages)
    trained = tokenizer.decode([t for t, l in zip(input_ids, labels, strict=True) if l != IGNORE])
    assert trained == "3<|im_end|>\n4<|im_end|>\n"
    assert tokenizer.decode(input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_split_is_deterministic_per_row():
    assert split_of("abc", 0.5, 1) == split_of("abc", 0.5, 1)
    splits = [split_of(f"row{i}", 0.1, 42) for i in range(2000)]
    assert 0.07 < splits.count("eval") / len(splits) < 0.13


def sft_row(i, messages):
    return {"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "kind": "sft",
            "messages": json.dumps(messages), "chosen": None, "rejected": None}


def test_format_quarantines_rows_over_cutoff_when_told_to_drop(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    short = [{"role": "user", "content": "Add. 1 + 2"}, {"role": "assistant", "content": "3"}]
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "3"}]
    rows = [sft_row(i, short) for i in range(8)] + [sft_row(8, long)]
    rows += [{**sft_row(i, short[:1]), "kind": "preference", "chosen": "3", "rejected": "4"} for i in range(9, 17)]
    quarantine, report = format_rows(rows, tokenizer, 64, 0.5, 0, tmp_path, overlength="drop")
    assert [(q["row_id"], q["reason"]) for q in quarantine] == [("s:8", "exceeds_cutoff_len")]
    assert report["max_tokens"] <= 64 and report["sft_rows_without_labels"] == 0 and report["truncated"] == 0
    sft, pref = load_from_disk(tmp_path / "sft"), load_from_disk(tmp_path / "preference")
    assert len(sft["train"]) + len(sft["eval"]) == 8 and len(pref["train"]) + len(pref["eval"]) == 8
    assert pref["train"][0]["chosen"] == [{"role": "assistant", "content": "3"}]
    assert pref["train"][0]["prompt"] == short[:1]


def test_format_refuses_an_empty_sft_split(tiny_model_dir, tmp_path):
    short = [{"role": "user", "content": "Add. 1 + 2"}, {"role": "assistant", "content": "3"}]
    with pytest.raises(DataError, match="no sft rows reached the (train|eval) split"):
        format_rows([sft_row(0, short)], load_tokenizer(tiny_model_dir), 64, 0.5, 0, tmp_path)


def test_sft_only_data_writes_no_preference_view_and_the_stages_that_need_one_say_so(tiny_model_dir, tmp_path):
    short = [{"role": "user", "content": "Add. 1 + 2"}, {"role": "assistant", "content": "3"}]
    rows = [sft_row(i, short) for i in range(8)]
    rows.append({**sft_row(8, short[:1]), "kind": "preference", "chosen": "3", "rejected": "4"})  # one split only
    _, report = format_rows(rows, load_tokenizer(tiny_model_dir), 64, 0.5, 0, tmp_path)
    assert (tmp_path / "sft").is_dir() and not (tmp_path / "preference").exists() and not (tmp_path / "kto").exists()
    assert report["preference_train"] + report["preference_eval"] == 1
    with pytest.raises(DataError, match="^reward_model: no preference rows reached both .* take rm out of"):
        require_view(tmp_path, "preference", "reward_model")
    with pytest.raises(DataError, match=r"^dpo_adapter: no kto rows .* take dpo \(or kto\) out of"):
        require_view(tmp_path, "kto", "dpo_adapter")


def test_tool_calls_are_trained_and_observations_are_not(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "user", "content": "Weather?"}, {"role": "function_call", "content": '{"name": "w"}'},
                {"role": "observation", "content": "3C"}, {"role": "assistant", "content": "3 degrees"}]
    input_ids, labels = tokenize_sft(tokenizer, messages)
    trained = tokenizer.decode([t for t, l in zip(input_ids, labels, strict=True) if l != IGNORE])
    assert trained == '<tool_call>\n{"name": "w"}\n</tool_call><|im_end|>\n3 degrees<|im_end|>\n'


def test_kto_rows_get_their_own_view(tiny_model_dir, tmp_path):
    short = [{"role": "user", "content": "Add. 1 + 2"}, {"role": "assistant", "content": "3"}]
    rows = [sft_row(i, short) for i in range(8)]
    rows += [{**sft_row(i, short[:1]), "kind": "preference", "chosen": "3", "rejected": "4"} for i in range(8, 16)]
    rows += [{**sft_row(i, short), "kind": "kto", "label": "true" if i % 2 else "false"} for i in range(16, 24)]
    _, report = format_rows(rows, load_tokenizer(tiny_model_dir), 64, 0.5, 0, tmp_path)
    kto = load_from_disk(tmp_path / "kto")
    assert report["kto_train"] + report["kto_eval"] == 8 == len(kto["train"]) + len(kto["eval"])
    assert kto["train"][0]["completion"] == [{"role": "assistant", "content": "3"}]
    assert {r["label"] for r in list(kto["train"]) + list(kto["eval"])} == {True, False}


def test_a_training_row_that_near_duplicates_an_eval_row_is_removed(tiny_model_dir, tmp_path):
    long = "Reverse the order of the words and reply with the result only please: alpha beta gamma delta epsilon"
    rows = [sft_row(i, [{"role": "user", "content": f"Add the numbers {i} and {i * 7 + 3}."},
                        {"role": "assistant", "content": str(i * 8 + 3)}]) for i in range(12)]
    twins = [sft_row(100 + i, [{"role": "user", "content": long + "!" * i},
                               {"role": "assistant", "content": "epsilon delta gamma beta alpha"}]) for i in range(6)]
    rows += [{**r, "content_hash": f"twin{i}"} for i, r in enumerate(twins)]
    rows += [{**sft_row(i, [{"role": "user", "content": f"Pick {i}"}]), "kind": "preference", "chosen": str(i),
              "rejected": "no"} for i in range(200, 208)]
    splits = {r["row_id"]: split_of(r["content_hash"], 0.5, 0) for r in rows}
    twin_splits = [splits[r["row_id"]] for r in twins]
    assert "eval" in twin_splits and "train" in twin_splits  # the fixture really straddles the split
    quarantine, report = format_rows(rows, load_tokenizer(tiny_model_dir), 96, 0.5, 0, tmp_path,
                                     decontamination_threshold=0.8)
    leaked = {q["row_id"] for q in quarantine if q["reason"] == "contaminates_eval"}
    assert leaked == {r["row_id"] for r, s in zip(twins, twin_splits, strict=True) if s == "train"}
    assert report["contaminates_eval"] == len(leaked)
    assert all("eval row s:1" in q["detail"] for q in quarantine)


def test_the_tiny_template_renders_the_tools_and_a_template_that_drops_them_is_flagged(tiny_model_dir, tmp_path):
    import json as jsonlib

    from engine.data.format import format_rows, template_drops_tools
    from engine.models.load import load_tokenizer
    tokenizer = load_tokenizer(tiny_model_dir)
    tools = [{"name": "send_email", "parameters": {"recipient": {"type": "string"}}}]
    messages = [{"role": "user", "content": "Mail bob@example.com"},
                {"role": "function_call", "content": '{"name": "send_email", "arguments": {"recipient": "bob@example.com"}}'}]
    rendered = tokenizer.apply_chat_template(messages[:1], tools=tools, tokenize=False)
    assert '<tools>\n{"name": "send_email"' in rendered and not template_drops_tools(tokenizer, messages, tools)
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                               "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                               "{% endif %}")
    assert template_drops_tools(tokenizer, messages, tools)
    row = {"source": "s", "row_id": "s:0", "content_hash": "h0", "kind": "sft", "label": None, "chosen": None,
           "rejected": None, "tools": jsonlib.dumps(tools[0]), "messages": jsonlib.dumps(messages)}
    rows = [dict(row, row_id=f"s:{i}", content_hash=f"h{i}") for i in range(40)]
    _, report = format_rows(rows, tokenizer, 256, 0.2, 0, tmp_path)
    assert report["tools_dropped_by_template"] == 40


def test_preference_only_data_gives_an_sft_view_of_chosen_answers_that_sft_refuses(tiny_model_dir, tmp_path):
    """A DPO dataset alone (LLaMA-Factory's dpo_en_demo) still gives merge, quantization and evaluation held-out
    conversations: each pair's prompt with its chosen answer. The sft stage will not train on them, as LLaMA-Factory
    refuses ranking data for stage sft."""
    from engine.data.format import sft_view_source
    from engine.recipe import SftSection
    from engine.train.sft import train_sft
    rows = [{**sft_row(i, [{"role": "user", "content": f"Pick {i}"}]), "kind": "preference", "chosen": f"{i}",
             "rejected": "no"} for i in range(16)]
    _, report = format_rows(rows, load_tokenizer(tiny_model_dir), 64, 0.5, 0, tmp_path)
    assert report["sft_view_from"] == "preference" and sft_view_source(tmp_path) == "preference"
    sft = load_from_disk(tmp_path / "sft")
    assert len(sft["train"]) + len(sft["eval"]) == 16 == report["preference_train"] + report["preference_eval"]
    tokenizer = load_tokenizer(tiny_model_dir)
    row = sft["train"][0]
    trained = tokenizer.decode([t for t, l in zip(row["input_ids"], row["labels"], strict=True) if l != IGNORE])
    pair = next(r for r in rows if r["row_id"] == row["row_id"])
    assert trained == pair["chosen"] + "<|im_end|>\n"
    with pytest.raises(DataError, match="^sft: the selected datasets hold no SFT rows, only preference rows"):
        train_sft(tiny_model_dir, tmp_path, SftSection(), 64, tmp_path / "out")
