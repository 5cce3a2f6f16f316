"""GRPO's reward terms, its recipe section's errors, the rollout table, the gate and the stage's lineage."""

import textwrap

import pytest

from engine.evaluate.compare import grpo_gate
from engine.plan import make_plan
from engine.recipe import GrpoReward, GrpoSection, Recipe, load_recipe
from engine.graph import STAGES
from engine.train.rewards import RolloutLog, answer_scorer, reward_functions, reward_identity


def scored(reward: GrpoReward, completions: list[str], references: list[str]) -> list[float]:
    log = RolloutLog([reward.type])
    cfg = GrpoSection(rewards=[reward], per_device_train_batch_size=8)
    (func,), _ = reward_functions(cfg, None, None, log, lambda: 0)
    return func(prompts=["p"] * len(completions), completions=completions, reference=references)


def test_exact_match_ignores_surrounding_and_repeated_whitespace_only():
    assert scored(GrpoReward(type="exact_match"), [" 465 ", "465 ", "46 5", "466"], ["465"] * 4) == [1, 1, 0, 0]


def test_format_reward_needs_the_whole_completion_to_match():
    reward = GrpoReward(type="format", pattern=r"<answer>\d+</answer>")
    assert scored(reward, ["<answer>12</answer>", "x <answer>12</answer>", "<answer>a</answer>"],
                  ["", "", ""]) == [1, 0, 0]


def test_length_reward_is_1_at_the_target_and_falls_to_0_at_twice_or_nothing():
    reward = GrpoReward(type="length", target_chars=4)
    assert scored(reward, ["abcd", "ab", "", "abcdefgh", "abcdefghij"], [""] * 5) == [1.0, 0.5, 0.0, 0.0, 0.0]


def test_a_user_scorer_is_loaded_like_evaluation_scorer_and_fingerprinted_by_its_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_reward.py").write_text("def first_char(prediction, reference):\n"
                                           "    return float(prediction[:1] == reference[:1])\n")
    reward = GrpoReward(type="scorer", scorer="my_reward:first_char")
    assert scored(reward, ["apple", "pear"], ["avocado", "avocado"]) == [1.0, 0.0]
    before = reward_identity([reward])
    (tmp_path / "my_reward.py").write_text("def first_char(prediction, reference):\n    return 1.0\n")
    import importlib, sys
    sys.modules.pop("my_reward", None)
    importlib.invalidate_caches()
    assert reward_identity([reward]) != before and before[0].startswith("my_reward:first_char@")


def test_a_user_scorer_out_of_range_names_the_reward(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_reward.py").write_text("def two(prediction, reference):\n    return 2.0\n")
    with pytest.raises(ValueError, match="grpo.rewards scorer: scorer 'two' returned 2.0"):
        scored(GrpoReward(type="scorer", scorer="bad_reward:two"), ["x"], ["y"])


def test_every_term_records_its_scores_in_one_row_per_completion_with_the_weighted_total():
    cfg = GrpoSection(per_device_train_batch_size=8, rewards=[
        GrpoReward(type="exact_match", weight=2.0), GrpoReward(type="length", target_chars=1, weight=0.5)])
    log = RolloutLog(["exact_match", "length_1"])
    funcs, weights = reward_functions(cfg, None, None, log, lambda: 3)
    for func in funcs:
        func(prompts=["q", "q"], completions=["a", "bb"], reference=["a", "a"])
    table = log.table(weights, 10)
    assert table.to_dict("records") == [
        {"step": 3, "prompt": "q", "completion": "a", "exact_match": 1.0, "length_1": 1.0, "total": 2.5},
        {"step": 3, "prompt": "q", "completion": "bb", "exact_match": 0.0, "length_1": 0.0, "total": 0.0}]
    assert len(log.table(weights, 1)) == 1  # bounded by grpo.rollout_rows


@pytest.mark.parametrize("section, message", [
    ({"rewards": []}, "name at least one reward"),
    ({"rewards": [{"type": "format"}]}, "a format reward needs `pattern`"),
    ({"rewards": [{"type": "exact_match", "pattern": "x"}]}, "`pattern` belongs to a format reward"),
    ({"rewards": [{"type": "format", "pattern": "("}]}, "is not a regex"),
    ({"rewards": [{"type": "length"}]}, "a length reward needs `target_chars`"),
    ({"rewards": [{"type": "bogus"}]}, "reward_model"),
    ({"num_generations": 3, "per_device_train_batch_size": 16}, "must be a multiple of num_generations (3)"),
    ({"loss_type": "bnpo"}, "grpo"),
])
def test_grpo_section_errors_say_what_was_expected(section, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GrpoSection(**section)


def test_a_recipe_runs_one_online_rl_stage_and_a_reward_model_reward_needs_rm():
    with pytest.raises(ValueError, match="grpo.rewards names a reward_model reward, but rm is not in stages"):
        Recipe(stages=["sft", "grpo"], grpo={"rewards": [{"type": "reward_model"}]})
    assert Recipe(stages=["sft", "rm", "grpo"], grpo={"rewards": [{"type": "reward_model"}]}).runs("grpo")


def test_the_reward_model_is_a_parent_only_when_a_reward_reads_it():
    exact = load_recipe("tiny", {"stages": ["sft", "rm", "grpo"]})[0]
    judged = load_recipe("tiny", {"stages": ["sft", "rm", "grpo"],
                                  "grpo.rewards": [{"type": "reward_model"}, {"type": "exact_match"}]})[0]
    assert "reward_model" not in make_plan(STAGES, exact)["grpo_adapter"].parents
    assert "reward_model" in make_plan(STAGES, judged)["grpo_adapter"].parents
    off = make_plan(STAGES, load_recipe("tiny")[0])["grpo_adapter"]
    assert not off.parents
    merged = make_plan(STAGES, exact)["merged_model"].parents
    assert "grpo_adapter" in merged and "dpo_adapter" not in merged


def evaluation(accuracy_scores, rewards=None):
    return {"accuracy": sum(accuracy_scores) / len(accuracy_scores), "example_scores": accuracy_scores,
            "reward_score": None if rewards is None else sum(rewards) / len(rewards), "example_rewards": rewards}


def test_the_gate_judges_exact_match_and_the_reward_score_against_sft():
    sft, better = evaluation([1, 0, 0, 1]), evaluation([1, 1, 0, 1])
    passed, detail = grpo_gate(sft, better, 0.0, 0.0)
    assert passed and "gain +0.2500" in detail and "n=4" in detail
    assert grpo_gate(better, sft, 0.0, 0.0)[0] is False
    judged = grpo_gate(evaluation([1, 0], [0.5, 0.1]), evaluation([1, 0], [0.2, 0.1]), 0.0, 0.0)
    assert judged[0] is False and "mean reward score" in judged[1]
    assert grpo_gate(sft, {"configured": False, "reason": "grpo is not in the recipe's stages"}, 0, 0) == (
        None, "not configured: grpo is not in the recipe's stages")


def test_the_reward_curve_is_drawn_like_the_loss_curve():
    from engine.evaluate.sketches import stage_sketches
    drawn = stage_sketches({"reward_curve": [{"step": 5, "reward": 0.38}, {"step": 10, "reward": 0.46}]})
    from urllib.parse import unquote
    assert drawn["reward_curve"].startswith("![reward_curve](")
    assert "reward 0.38 to 0.46, steps 5-10" in unquote(drawn["reward_curve"])
