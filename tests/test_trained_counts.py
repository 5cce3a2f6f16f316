"""No pair or row is lost between formatted_data and the trainer: long preference pairs are cut the way
LLaMA-Factory cuts them, measured the way TRL's trainers tokenize them, so that RewardTrainer (which drops a pair
longer than max_length) and DPOTrainer/KTOTrainer (which cut it) train on every formatted example; each stage
reports what its trainer kept, and a check fails when that differs.

The reproduction: LLaMA-Factory's dpo_en_demo pairs at a cutoff most of them exceed. Before, formatted_data counted
an answer's end-of-turn without the newline Qwen-style templates render after it, every cut pair came out one token
over, and RewardTrainer silently kept only the pairs that had not needed a cut."""

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from engine.data.format import format_rows
from engine.data.ingest import ingest
from engine.data.registry import resolve_sources
from engine.models.load import load_tokenizer
from engine.recipe import RewardSection, DpoSection
from engine.train.accounting import all_trained, cut_by_trainer, trained_examples

STOCK = Path("tests/fixtures/llamafactory/data")
CUTOFF = 128


@pytest.fixture(scope="module")
def demo_pairs(tiny_model_dir, tmp_path_factory):
    """dpo_en_demo and kto_en_demo, formatted at a cutoff most of their rows exceed."""
    rows = ingest(resolve_sources(str(STOCK), "dataset_info.json", ["dpo_en_demo", "kto_en_demo"]))[0]
    out = tmp_path_factory.mktemp("demo_pairs")
    quarantine, report = format_rows(rows + sft_rows(), load_tokenizer(tiny_model_dir), CUTOFF, 0.1, 42, out,
                                     decontamination_threshold=None)
    return out, quarantine, report


def sft_rows():
    """A few SFT rows: formatted_data requires its SFT view."""
    return [{"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "kind": "sft", "chosen": None,
             "rejected": None, "messages": json.dumps([{"role": "user", "content": f"Say {i}"},
                                                       {"role": "assistant", "content": str(i)}])}
            for i in range(40)]


def test_every_demo_pair_is_kept_and_fits_as_the_trainers_tokenize_it(demo_pairs, tiny_model_dir):
    from trl.data_utils import _tokenize  # the one tokenization TRL's reward, DPO and KTO trainers share
    out, quarantine, report = demo_pairs
    tokenizer = load_tokenizer(tiny_model_dir)
    assert quarantine == [] and report["truncated"] > 100  # most pairs were cut, none dropped
    pref = load_from_disk(out / "preference")
    assert len(pref["train"]) + len(pref["eval"]) == 300
    for row in pref["train"]:
        for answer in (row["chosen"], row["rejected"]):
            assert len(_tokenize(tokenizer, row["prompt"] + answer)["input_ids"]) <= CUTOFF
    kto = load_from_disk(out / "kto")
    for row in kto["train"]:
        assert len(_tokenize(tokenizer, row["prompt"] + row["completion"])["input_ids"]) <= CUTOFF


def reward_args(out, max_length):
    from trl import RewardConfig
    from engine.train.arguments import trainer_kwargs
    return RewardConfig(**trainer_kwargs(RewardSection(), out), max_length=max_length)


def test_the_reward_trainer_keeps_every_formatted_pair(demo_pairs, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardTrainer
    out, _, _ = demo_pairs
    tokenizer = load_tokenizer(tiny_model_dir)
    train = load_from_disk(out / "preference")["train"].remove_columns(["row_id"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=reward_args(tmp_path, CUTOFF),
                            train_dataset=train, processing_class=tokenizer)
    counts = trained_examples(trainer, len(train), "pairs")
    assert counts == {"train_pairs": len(train), "formatted_train_pairs": len(train), "pairs_cut_by_trainer": 0}
    assert all_trained(counts, "pairs") == (True, f"trained on {len(train)} of {len(train)} formatted pairs")
    # the same trainer at one token less drops pairs, and the count says so
    short = RewardTrainer(model=model, args=reward_args(tmp_path, CUTOFF - 1),
                          train_dataset=train, processing_class=tokenizer)
    lost = trained_examples(short, len(train), "pairs")
    ok, detail = all_trained(lost, "pairs")
    assert lost["train_pairs"] < len(train) and not ok
    assert detail == (f"trained on {lost['train_pairs']} of {len(train)} formatted pairs; the trainer dropped "
                      f"{len(train) - lost['train_pairs']}")


def test_the_dpo_trainer_cuts_no_formatted_pair(demo_pairs, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    from engine.train.dpo import dpo_arguments
    out, _, _ = demo_pairs
    tokenizer = load_tokenizer(tiny_model_dir)
    train = load_from_disk(out / "preference")["train"].remove_columns(["row_id"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = DpoSection(precompute_ref_log_probs=False)
    from trl import DPOTrainer
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_arguments(cfg, CUTOFF, tmp_path), train_dataset=train,
                         processing_class=tokenizer)
    assert trained_examples(trainer, len(train), "pairs")["pairs_cut_by_trainer"] == 0
    assert cut_by_trainer(trainer.train_dataset, CUTOFF - 8) > 0  # a shorter max_length would cut, and be counted


def test_a_stage_without_the_count_fails_its_check():
    ok, detail = all_trained({"train_loss": 1.0}, "pairs")
    assert not ok and "rebuild" in detail
    ok, detail = all_trained({"train_rows": 10, "formatted_train_rows": 10, "rows_cut_by_trainer": 2}, "rows")
    assert not ok and detail == "trained on 10 of 10 formatted rows; the trainer's max_length cut 2 of them"
