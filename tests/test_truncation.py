"""Rows over cutoff_len are cut as LLaMA-Factory cuts them (infer_seqlen), counted, or dropped when asked."""

import json

import pytest
from datasets import load_from_disk

from engine.data.format import IGNORE, format_rows, infer_seqlen, sft_pairs, truncate_pairs
from engine.models.load import load_tokenizer
from engine.recipe import DataSection

SHORT = [{"role": "user", "content": "Add. 1 + 2"}, {"role": "assistant", "content": "3"}]
LONG_PROMPT = "Count the words: " + " ".join(f"w{i}" for i in range(150))


def row(i, messages, kind="sft", **extra):
    return {"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "kind": kind,
            "messages": json.dumps(messages), "chosen": None, "rejected": None, **extra}


def base_rows():
    rows = [row(i, SHORT) for i in range(8)]
    return rows + [row(i, SHORT[:1], "preference", chosen="3", rejected="4") for i in range(8, 16)]


@pytest.mark.parametrize("source, target, cutoff, expected", [
    (100, 10, 64, (54, 10)),   # a short answer stays whole, the prompt is cut
    (10, 100, 64, (10, 54)),   # a short prompt stays whole, the answer is cut
    (100, 100, 64, (32, 32)),  # both long: cut in proportion
    (90, 30, 64, (34, 30)),    # 30 * 2 < 64: the answer is short enough to keep
    (90, 40, 64, (45, 19)),    # int(64 * 40 / 130) answer tokens
    (5, 5, 64, (5, 5)),        # fits: nothing cut
])
def test_infer_seqlen_is_llamafactorys(source, target, cutoff, expected):
    assert infer_seqlen(source, target, cutoff) == expected


def test_recipe_key_defaults_to_truncate():
    assert DataSection().overlength == "truncate" and DataSection(overlength="drop").overlength == "drop"


def test_an_over_long_sft_row_is_truncated_turn_by_turn(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    long = [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "151 words"},
            {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Still 151."}]
    pairs = sft_pairs(tokenizer, long)
    first_source, first_target = pairs[0]
    assert len(first_source) + len(first_target) > 64
    quarantine, report = format_rows(base_rows() + [row(99, long)], tokenizer, 64, 0.5, 0, tmp_path)
    assert quarantine == [] and report["truncated"] == 1 and report["max_tokens"] <= 64
    sft = load_from_disk(tmp_path / "sft")
    cut = next(r for split in ("train", "eval") for r in sft[split] if r["row_id"] == "s:99")
    assert len(cut["input_ids"]) == 64
    source_len, target_len = infer_seqlen(len(first_source), len(first_target), 64)
    assert cut["input_ids"] == first_source[:source_len] + first_target[:target_len]  # the second turn is dropped
    assert cut["labels"] == [IGNORE] * source_len + first_target[:target_len]
    assert tokenizer.decode(cut["input_ids"]).startswith(tokenizer.decode(first_source[:10]))  # the beginning stays


def test_truncate_pairs_without_cutoff_is_the_whole_conversation(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = sft_pairs(tokenizer, SHORT * 1)
    ids, labels, cut = truncate_pairs(pairs, None)
    assert not cut and ids == pairs[0][0] + pairs[0][1] and labels.count(IGNORE) == len(pairs[0][0])


def test_an_over_long_preference_row_keeps_its_answers_and_cuts_its_prompt(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    pair = row(99, [{"role": "user", "content": LONG_PROMPT}], "preference", chosen="151", rejected="150")
    quarantine, report = format_rows(base_rows() + [pair], tokenizer, 64, 0.5, 0, tmp_path)
    assert quarantine == [] and report["truncated"] == 1 and report["max_tokens"] <= 64
    pref = load_from_disk(tmp_path / "preference")
    cut = next(r for split in ("train", "eval") for r in pref[split] if r["row_id"] == "s:99")
    assert (cut["chosen"][0]["content"], cut["rejected"][0]["content"]) == ("151", "150")
    prompt = cut["prompt"][0]["content"]
    assert LONG_PROMPT.startswith(prompt) and 0 < len(prompt) < len(LONG_PROMPT)
    rendered = tokenizer.apply_chat_template(cut["prompt"], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    assert len(rendered) + len(tokenizer("151" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) <= 64


def test_long_answers_are_cut_in_proportion(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    answer = " ".join(f"a{i}" for i in range(120))
    pair = row(99, [{"role": "user", "content": LONG_PROMPT}], "preference", chosen=answer, rejected="no")
    quarantine, report = format_rows(base_rows() + [pair], tokenizer, 64, 0.5, 0, tmp_path)
    assert quarantine == [] and report["truncated"] == 1 and report["max_tokens"] <= 64
    pref = load_from_disk(tmp_path / "preference")
    cut = next(r for split in ("train", "eval") for r in pref[split] if r["row_id"] == "s:99")
    chosen = cut["chosen"][0]["content"]
    assert answer.startswith(chosen) and len(chosen) < len(answer) and cut["rejected"][0]["content"] == "no"


def test_drop_quarantines_over_long_preference_rows(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    pair = row(99, [{"role": "user", "content": LONG_PROMPT}], "preference", chosen="151", rejected="150")
    quarantine, report = format_rows(base_rows() + [pair], tokenizer, 64, 0.5, 0, tmp_path, overlength="drop")
    assert [(q["row_id"], q["reason"]) for q in quarantine] == [("s:99", "exceeds_cutoff_len")]
    assert report["truncated"] == 0 and report["exceeds_cutoff_len"] == 1
