"""Checks that make the gates mean something: each source keeps most of its rows through cleaning, the eval splits
the preference stages are judged on are big enough, and the reward model's accuracy carries n and its interval."""

import json
import re

import dagster as dg
from datasets import Dataset
import pytest

from assets.clean_data import every_source_within_loss_bound
from assets.formatted_data import enough_eval_pairs
from assets.dpo_adapter import reward_margin_above_bound
from assets.reward_model import accuracy_above_bound
from engine.store.artifacts import Artifact
from engine.data.clean import clean
from engine.data.format import format_rows
from engine.data.ingest import content_hash
from engine.models.load import load_tokenizer
from engine.recipe import CleanSection, load_recipe
from engine.data.constants import IGNORE
from engine.store.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, table_dicts, table_files, write_rows


def artifact(asset: str, metrics: dict) -> Artifact:
    return Artifact(asset, "f" * 16, None, metrics)


def row(source, i, user, answer=None):
    """An ingested row; without an answer, its messages are a prompt (a preference pair's)."""
    messages = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])
    return {"source": source, "row_id": f"{source}:{i}", "content_hash": content_hash(messages, None, None),
            "format": "alpaca", "kind": "sft", "messages": json.dumps(messages), "chosen": None, "rejected": None}


def cleaned(result, folder) -> Artifact:
    """clean_data's artifact as its entry writes it: the kept rows and the quarantine as Parquet, the report."""
    write_rows(result.rows, folder / "rows.parquet", ROW_COLUMNS)
    write_rows(result.quarantine, folder / "quarantine.parquet", QUARANTINE_COLUMNS)
    return Artifact("clean_data", "f" * 16, folder, result.report)


def test_a_source_that_loses_most_of_its_rows_is_named_with_its_numbers(tmp_path):
    rows = [row("good", i, f"Add the two numbers. {i} + {2 * i + 7}", str(3 * i + 7)) for i in range(4)]
    rows += [row("copied", i, "Reverse the words: alpha beta gamma", "gamma beta alpha") for i in range(4)]  # 3 exact duplicates
    written = cleaned(clean(rows, CleanSection(), ["good", "copied", "empty"]), tmp_path)  # `empty`: selected, no rows
    assert written.metrics["rows_in_by_source"] == {"good": 4, "copied": 4, "empty": 0}
    recipe, _ = load_recipe("tiny")
    passed, detail, metadata = every_source_within_loss_bound(written, recipe)
    assert not passed
    assert detail == "copied: lost 75.0% (4 in, 1 out), bound 50.0%, over by 25.0%"
    table = metadata["source_losses"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [(r.data["source"], r.data["rows_in"], r.data["rows_out"], r.data["share_lost"], r.data["within_bound"])
            for r in table.records] == [("good", 4, 4, 0.0, True), ("copied", 4, 1, 0.75, False),
                                        ("empty", 0, 0, 0.0, True)]
    loose, _ = load_recipe("tiny", {"clean.max_source_loss_ratio": 0.75})
    assert every_source_within_loss_bound(written, loose)[:2] == (
        True, "every source within 75.0%; most lost: copied 75.0%")


@pytest.fixture(scope="module")
def few_pairs(tiny_model_dir, tmp_path_factory):
    """A formatted dataset whose preference and KTO eval splits hold a handful of rows."""
    rows = [row("s", i, f"Add. {i} + 3", "3") for i in range(20)]
    rows += [{**row("p", i, f"Add. {i} + 2"), "kind": "preference", "chosen": "3", "rejected": "4"} for i in range(40)]
    rows += [{**row("k", i, f"Add. {i} + 1", "3"), "kind": "kto", "label": "true" if i % 2 else "false"}
             for i in range(20)]
    out = tmp_path_factory.mktemp("few")
    _, report = format_rows(rows, load_tokenizer(tiny_model_dir), 64, 0.2, 0, out)
    return Artifact("formatted_data", "f" * 16, out, report)


def test_too_few_eval_pairs_fail_formatted_data_with_the_count_and_the_minimum(few_pairs):
    n = few_pairs.metrics["preference_eval"]
    assert 0 < n < 32
    recipe, _ = load_recipe("tiny")
    assert enough_eval_pairs(few_pairs, recipe) == (
        False, f"too few eval pairs: {n} in the preference eval split, need >= 32, short by {32 - n} "
               "(raise data.val_size or add pairs)")
    lowered, _ = load_recipe("tiny", {"data.min_eval_pairs": n})
    assert enough_eval_pairs(few_pairs, lowered) == (
        True, f"{n} eval pairs in the preference eval split (reward_model, dpo_adapter), need >= {n}")


def test_kto_is_judged_on_its_own_eval_split(few_pairs):
    n_kto, n_pref = few_pairs.metrics["kto_eval"], few_pairs.metrics["preference_eval"]
    assert 0 < n_kto < n_pref  # a minimum between them: the preference split meets it, the KTO split does not
    kto = {"dpo.pref_loss": "kto", "data.min_eval_pairs": n_pref}
    kto_only, _ = load_recipe("tiny", {"stages": ["sft", "kto"], **kto})
    assert enough_eval_pairs(few_pairs, kto_only) == (
        False, f"too few eval rows: {n_kto} in the kto eval split, need >= {n_pref}, short by {n_pref - n_kto} "
               "(raise data.val_size or add KTO rows)")
    both, _ = load_recipe("tiny", {"stages": ["sft", "rm", "kto"], **kto})
    assert enough_eval_pairs(few_pairs, both) == (
        False, f"{n_pref} eval pairs in the preference eval split (reward_model), need >= {n_pref}; too few eval "
               f"rows: {n_kto} in the kto eval split, need >= {n_pref}, short by {n_pref - n_kto} (raise "
               "data.val_size or add KTO rows)")


def test_without_rm_or_dpo_the_minimum_is_not_configured(few_pairs):
    recipe, _ = load_recipe("tiny", {"stages": ["sft"]})
    assert enough_eval_pairs(few_pairs, recipe) == (
        None, "not configured: neither rm nor dpo (or kto) is in the recipe's stages")  # not evaluated: no pass


def test_the_shipped_eval_splits_meet_the_default_minimum(formatted_dir, tiny_recipe):
    written = Artifact("formatted_data", "f" * 16, formatted_dir, {})
    assert enough_eval_pairs(written, tiny_recipe)[0]
    kto, _ = load_recipe("tiny", {"stages": ["sft", "kto"], "dpo.pref_loss": "kto"})
    assert enough_eval_pairs(written, kto)[0]


def test_the_eval_pairs_are_counted_in_the_written_split_not_the_report(few_pairs, tmp_path):
    """A report that claims enough pairs does not pass an eval split written with too few."""
    recipe, _ = load_recipe("tiny", {"data.min_eval_pairs": 1})
    claimed = Artifact("formatted_data", "f" * 16, tmp_path, {**few_pairs.metrics, "preference_eval": 1000})
    assert enough_eval_pairs(claimed, recipe) == (
        False, "too few eval pairs: 0 in the preference eval split, need >= 1, short by 1 (raise data.val_size or "
               "add pairs)")


def test_reward_accuracy_detail_carries_n_and_the_wilson_interval():
    recipe, _ = load_recipe("tiny")  # reward.min_accuracy 0.6
    assert accuracy_above_bound(artifact("reward_model", {"eval_accuracy": 0.8, "eval_pairs": 10}), recipe) == (
        True, "accuracy 0.8000 (95% CI 0.4902..0.9433, n=10 pairs), needs > 0.6")
    assert accuracy_above_bound(artifact("reward_model", {"eval_accuracy": 0.5, "eval_pairs": 82}), recipe) == (
        False, "accuracy 0.5000 (95% CI 0.3942..0.6058, n=82 pairs), needs > 0.6, short by 0.1000")


def test_bounds_that_show_no_learning_say_so():
    """The checks are named after their bounds; a bound at or below chance (reward) or below 0 (DPO margin), as a
    few-step smoke run sets it, passes what it is set to pass, and the detail says it shows no learning."""
    smoke, _ = load_recipe("tiny", {"reward.min_accuracy": 0.0, "dpo.min_reward_margin": -1000.0})
    assert accuracy_above_bound(artifact("reward_model", {"eval_accuracy": 0.45, "eval_pairs": 20}), smoke) == (
        True, "accuracy 0.4500 (95% CI 0.2582..0.6579, n=20 pairs), needs > 0.0 (at or below chance, 0.5: passing "
              "it shows no learning)")
    assert reward_margin_above_bound(artifact("dpo_adapter", {"eval_reward_margin": -0.2}), smoke) == (
        True, "mean chosen-minus-rejected reward -0.2, needs > -1000.0 (below 0: accepts a model that prefers the "
              "rejected answers)")
    tiny, _ = load_recipe("tiny")  # dpo.min_reward_margin 0.0
    assert reward_margin_above_bound(artifact("dpo_adapter", {"eval_reward_margin": 0.0}), tiny) == (
        False, "mean chosen-minus-rejected reward 0.0, needs > 0.0")


def test_the_data_checks_pass_on_the_shipped_data_and_their_metadata_reaches_dagster(tmp_path):
    from pipelines.definitions import ASSETS, resources
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources("tiny", str(tmp_path)), instance=instance,
                                selection="*clean_data")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()
              if c.asset_key.to_user_string() == "clean_data"}
    loss = checks["every_source_within_loss_bound"]
    assert loss.passed, loss.metadata["detail"].value
    sources = {r.data["source"]: r.data for r in loss.metadata["source_losses"].value.records}
    assert set(sources) == {"alpaca_tasks", "sharegpt_tasks", "openai_tasks", "preference_tasks"}
    assert all(0 < s["share_lost"] < 0.5 and s["rows_out"] < s["rows_in"] for s in sources.values())


# --- accounting and labels, read from what was written

def test_raw_rows_are_accounted_against_the_records_counted_in_the_files(tmp_path):
    """Malformed records (an empty array item, NaN, a line that is no JSON, a CSV field over the csv module's limit) are
    counted in their files by a counter of their own and must be stored or quarantined; num_samples and
    data.max_samples cap what is expected."""
    from assets.raw_data import every_row_accounted
    from engine.data.ingest import ingest_to
    from engine.data.registry import DatasetEntry
    good = '{"instruction": "Add.", "input": "1 + 2", "output": "3"}'
    (tmp_path / "a.json").write_text(f'[{good}, , {{"instruction": NaN}}, {good},\n{good}]')
    (tmp_path / "b.jsonl").write_text(f"{good}\n\n{{not json\n  \n{good}\n")
    (tmp_path / "c.csv").write_text(f'instruction,input,output\nAdd.,"{"1" * 200_000}",5\n'  # over csv's field limit
                                    'Add.,1 + 2,3\n\nAdd.,"2\n+ 2",4\n')
    sources = {"a": (DatasetEntry(file_name="a.json"), tmp_path / "a.json"),
               "b": (DatasetEntry(file_name="b.jsonl", num_samples=2), tmp_path / "b.jsonl"),
               "c": (DatasetEntry(file_name="c.csv"), tmp_path / "c.csv")}
    out = tmp_path / "raw"
    out.mkdir()
    recipe, _ = load_recipe("tiny", {"data.max_samples": 4})
    raw = Artifact("raw_data", "f" * 16, out, ingest_to(out, sources, max_samples=4))
    assert every_row_accounted(raw, recipe) == (
        True, "a: 5 records in its files, max_samples 4, 2 stored + 2 quarantined = 4; b: 3 records in its files, "
              "num_samples 2, 1 stored + 1 quarantined = 2; c: 3 records in its files, 2 stored + 1 quarantined = 3")
    rows = list(table_dicts(out, "rows"))
    for shard in table_files(out, "rows"):
        shard.unlink()
    write_rows([r for r in rows if r["row_id"] != "c:1"], out / "rows.parquet", ROW_COLUMNS)
    assert every_row_accounted(raw, recipe)[0] is False
    assert every_row_accounted(raw, recipe)[1].endswith(
        "c: 3 records in its files, 1 stored + 1 quarantined = 2, expected 3 (1 missing)")


def test_labels_of_cut_rows_decode_to_beginnings_of_their_answers(tiny_model_dir, sample_rows, tmp_path):
    """At a cutoff_len that cuts most rows (SFT rows, and the SFT view made of pairs' chosen answers), every
    written row's labels decode to its answers; labels moved onto the prompt's tokens do not."""
    from engine.data.written_views import answers_by_row, label_problems, view_splits
    tokenizer = load_tokenizer(tiny_model_dir)
    for kind, source in (("sft", "sft"), ("preference", "preference")):
        rows = [r for r in sample_rows[0] if r["kind"] == kind][:80]
        out = tmp_path / kind
        _, report = format_rows(rows, tokenizer, 24, 0.2, 0, out)
        assert report["sft_view_from"] == source and report["truncated"] > 20, report
        (tmp_path / f"{kind}-clean").mkdir()
        write_rows(rows, tmp_path / f"{kind}-clean" / "rows.parquet", ROW_COLUMNS)
        answers = answers_by_row(tmp_path / f"{kind}-clean", source)
        splits = view_splits(out, "sft")
        rows_checked, decoded, problems = label_problems(splits, answers, tokenizer, 24, source != "sft")
        assert (rows_checked, decoded, problems) == (sum(map(len, splits.values())), rows_checked, [])
        assert rows_checked > 60
    row = next(r for r in view_splits(tmp_path / "sft", "sft")["train"] if len(r["input_ids"]) < 24)
    misplaced = {**row, "labels": [t if label == IGNORE else IGNORE for t, label in zip(row["input_ids"], row["labels"])]}
    answers = answers_by_row(tmp_path / "sft-clean", "sft")
    _, _, problems = label_problems({"train": Dataset.from_list([misplaced])}, answers, tokenizer, 24, False)
    assert len(problems) == 1 and re.match(rf"train {row['row_id']}: answer 0 decodes to '.*', expected '.*'",
                                           problems[0]), problems


def test_the_checks_every_row_gets_find_on_batches_what_row_by_row_finds(tiny_model_dir, sample_rows, tmp_path,
                                                                       monkeypatch):
    """Rows with labels shorter than their input_ids, with no label token, with a label that is not its input token
    (the first and last rows of a batch among them): label_problems on Arrow batches of 7 rows names the same rows
    with the same problems, in the same order, as row_problem on every row; the rows it decodes are the ones
    row_problem decodes (a wrong answer planted on one inside a later batch is found)."""
    from engine.data import written_views
    from engine.data.written_views import (answer_markup, answers_by_row, decoded_steps, label_problems, row_problem,
                                           view_splits)
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [r for r in sample_rows[0] if r["kind"] == "sft"][:80]
    format_rows(rows, tokenizer, 64, 0.2, 0, tmp_path / "out")
    (tmp_path / "clean").mkdir()
    write_rows(rows, tmp_path / "clean" / "rows.parquet", ROW_COLUMNS)
    splits = view_splits(tmp_path / "out", "sft")
    train = splits["train"].to_list()

    def mislabel(row):  # its first trained label one more than its input token
        i = next(i for i, label in enumerate(row["labels"]) if label != IGNORE)
        row["labels"][i] = row["input_ids"][i] + 1
    train[0]["labels"] = train[0]["labels"][:-1]
    train[6]["labels"] = [IGNORE] * len(train[6]["labels"])
    mislabel(train[7])
    mislabel(train[30])
    train[-1]["labels"] = [*train[-1]["labels"], IGNORE]
    splits = {**splits, "train": Dataset.from_list(train)}
    answers = answers_by_row(tmp_path / "clean", "sft")
    monkeypatch.setattr(written_views, "DECODED_PER_SPLIT", 5)
    monkeypatch.setattr(written_views, "CHECKED_ROWS", 7)
    markup, steps = answer_markup(tokenizer), decoded_steps(splits)
    decoded_later = 2 * steps["train"]  # a decoded row inside a later batch: its answer no longer what it trains on
    assert decoded_later % 7 and decoded_later not in (0, 6, 7, 30, len(train) - 1), decoded_later
    answers[train[decoded_later]["row_id"]] = ["an answer it was not made from"]
    expected = [f"{split} {row['row_id']}: {problem}" for split, dataset in splits.items()
                for i, row in enumerate(dataset)
                if (problem := row_problem(row, answers, tokenizer, markup, 64, False, i % steps[split] == 0))]
    checked, decoded, problems = label_problems(splits, answers, tokenizer, 64, False)
    assert problems == expected and len(problems) == 6, problems
    assert f"train {train[decoded_later]['row_id']}: answer 0 decodes to" in problems[3], problems
    assert checked == len(train) + len(splits["eval"]) and decoded == sum(
        -(-len(d) // steps[s]) for s, d in splits.items())
    assert [p.split(": ", 1)[1].split(" ")[0] for p in problems[:3]] == ["%d" % (len(train[0]["input_ids"]) - 1),
                                                                          "no", "label"]
