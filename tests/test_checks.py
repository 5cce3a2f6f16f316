"""Checks that make the gates mean something: each source keeps most of its rows through cleaning, the eval splits
the preference stages are judged on are big enough, and the reward model's accuracy carries n and its interval."""

import json

import dagster as dg
import pytest
from datasets import load_from_disk

from assets.clean_data import every_source_within_loss_bound
from assets.formatted_data import enough_eval_pairs
from assets.reward_model import accuracy_above_chance
from engine.store.artifacts import Artifact
from engine.data.clean import clean
from engine.data.format import format_rows
from engine.data.ingest import content_hash
from engine.models.load import load_tokenizer
from engine.recipe import CleanSection, load_recipe


def artifact(asset: str, metrics: dict) -> Artifact:
    return Artifact(asset, "f" * 16, None, metrics)


def row(source, i, user, answer=None):
    """An ingested row; without an answer, its messages are a prompt (a preference pair's)."""
    messages = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])
    return {"source": source, "row_id": f"{source}:{i}", "content_hash": content_hash(messages, None, None),
            "format": "alpaca", "kind": "sft", "messages": json.dumps(messages), "chosen": None, "rejected": None}


def test_a_source_that_loses_most_of_its_rows_is_named_with_its_numbers():
    rows = [row("good", i, f"Add the two numbers. {i} + {2 * i + 7}", str(3 * i + 7)) for i in range(4)]
    rows += [row("copied", i, "Reverse the words: alpha beta gamma", "gamma beta alpha") for i in range(4)]  # 3 exact duplicates
    report = clean(rows, CleanSection(), ["good", "copied", "empty"]).report  # `empty` is selected, has no rows
    assert report["rows_in_by_source"] == {"good": 4, "copied": 4, "empty": 0}
    recipe, _ = load_recipe("tiny")
    passed, detail, metadata = every_source_within_loss_bound(artifact("clean_data", report), recipe)
    assert not passed
    assert detail == "copied: lost 75.0% (4 in, 1 out), bound 50.0%, over by 25.0%"
    table = metadata["source_losses"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [(r.data["source"], r.data["rows_in"], r.data["rows_out"], r.data["share_lost"], r.data["within_bound"])
            for r in table.records] == [("good", 4, 4, 0.0, True), ("copied", 4, 1, 0.75, False),
                                        ("empty", 0, 0, 0.0, True)]
    loose, _ = load_recipe("tiny", {"clean.max_source_loss_ratio": 0.75})
    assert every_source_within_loss_bound(artifact("clean_data", report), loose)[:2] == (
        True, "every source within 75.0%; most lost: copied 75.0%")


@pytest.fixture(scope="module")
def few_pairs(tiny_model_dir, tmp_path_factory):
    """A formatted dataset whose preference and KTO eval splits hold a handful of rows."""
    rows = [row("s", i, f"Add. {i} + 3", "3") for i in range(20)]
    rows += [{**row("p", i, f"Add. {i} + 2"), "kind": "preference", "chosen": "3", "rejected": "4"} for i in range(40)]
    rows += [{**row("k", i, f"Add. {i} + 1", "3"), "kind": "kto", "label": "true" if i % 2 else "false"}
             for i in range(20)]
    _, report = format_rows(rows, load_tokenizer(tiny_model_dir), 64, 0.2, 0, tmp_path_factory.mktemp("few"))
    return report


def test_too_few_eval_pairs_fail_formatted_data_with_the_count_and_the_minimum(few_pairs):
    n = few_pairs["preference_eval"]
    assert 0 < n < 32
    recipe, _ = load_recipe("tiny")
    assert enough_eval_pairs(artifact("formatted_data", few_pairs), recipe) == (
        False, f"too few eval pairs: {n} in the preference eval split, need >= 32, short by {32 - n} "
               "(raise data.val_size or add pairs)")
    lowered, _ = load_recipe("tiny", {"data.min_eval_pairs": n})
    assert enough_eval_pairs(artifact("formatted_data", few_pairs), lowered) == (
        True, f"{n} eval pairs in the preference eval split (reward_model, dpo_adapter), need >= {n}")


def test_kto_is_judged_on_its_own_eval_split(few_pairs):
    n_kto, n_pref = few_pairs["kto_eval"], few_pairs["preference_eval"]
    assert 0 < n_kto < n_pref  # a minimum between them: the preference split meets it, the KTO split does not
    kto = {"dpo.pref_loss": "kto", "data.min_eval_pairs": n_pref}
    kto_only, _ = load_recipe("tiny", {"stages": ["sft", "kto"], **kto})
    assert enough_eval_pairs(artifact("formatted_data", few_pairs), kto_only) == (
        False, f"too few eval rows: {n_kto} in the kto eval split, need >= {n_pref}, short by {n_pref - n_kto} "
               "(raise data.val_size or add KTO rows)")
    both, _ = load_recipe("tiny", {"stages": ["sft", "rm", "kto"], **kto})
    assert enough_eval_pairs(artifact("formatted_data", few_pairs), both) == (
        False, f"{n_pref} eval pairs in the preference eval split (reward_model), need >= {n_pref}; too few eval "
               f"rows: {n_kto} in the kto eval split, need >= {n_pref}, short by {n_pref - n_kto} (raise "
               "data.val_size or add KTO rows)")


def test_without_rm_or_dpo_the_minimum_is_not_configured(few_pairs):
    recipe, _ = load_recipe("tiny", {"stages": ["sft"]})
    assert enough_eval_pairs(artifact("formatted_data", few_pairs), recipe) == (
        None, "not configured: neither rm nor dpo (or kto) is in the recipe's stages")  # not evaluated: no pass


def test_the_shipped_eval_splits_meet_the_default_minimum(formatted_dir, tiny_recipe):
    counts = {f"{view}_eval": len(load_from_disk(formatted_dir / view)["eval"]) for view in ("preference", "kto")}
    assert enough_eval_pairs(artifact("formatted_data", counts), tiny_recipe)[0], counts
    kto, _ = load_recipe("tiny", {"stages": ["sft", "kto"], "dpo.pref_loss": "kto"})
    assert enough_eval_pairs(artifact("formatted_data", counts), kto)[0], counts


def test_reward_accuracy_detail_carries_n_and_the_wilson_interval():
    recipe, _ = load_recipe("tiny")  # reward.min_accuracy 0.6
    assert accuracy_above_chance(artifact("reward_model", {"eval_accuracy": 0.8, "eval_pairs": 10}), recipe) == (
        True, "accuracy 0.8000 (95% CI 0.4902..0.9433, n=10 pairs), needs > 0.6")
    assert accuracy_above_chance(artifact("reward_model", {"eval_accuracy": 0.5, "eval_pairs": 82}), recipe) == (
        False, "accuracy 0.5000 (95% CI 0.3942..0.6058, n=82 pairs), needs > 0.6, short by 0.1000")


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
