"""Evaluation pieces: questions from the eval split, scorers, the comparison table and the gates' verdicts."""

import importlib.util

import pytest
import torch

from engine.data.format import tokenize_sft
from engine.errors import RecipeError
from engine.evaluate.measure import answer_examples, answered_sequences, turn_suffix
from engine.evaluate.compare import check_lm_eval, comparison_markdown, dpo_gate, gates, quantized_gate
from engine.models.load import load_tokenizer
from engine.recipe import EvaluationSection, load_recipe
from engine.evaluate.scorers import exact_match, resolve_scorer, score, scorer_identity
from datasets import Dataset

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 1 + 2"},
                {"role": "assistant", "content": "3"}, {"role": "user", "content": "Reverse a b"},
                {"role": "assistant", "content": "b a"}]


def test_an_eval_row_becomes_its_last_question_and_answer(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    input_ids, labels = tokenize_sft(tokenizer, CONVERSATION)
    (example,) = answer_examples(Dataset.from_dict({"input_ids": [input_ids], "labels": [labels]}), tokenizer, 5)
    assert example.reference == "b a"
    prompt = tokenizer.decode(example.prompt_ids)
    assert prompt == tokenizer.apply_chat_template(CONVERSATION[:-1], add_generation_prompt=True, tokenize=False)
    # the reward model reads the answer closed exactly as the template closes a turn
    assert answered_sequences(tokenizer, [example], ["b a"])[0] == input_ids


def test_turn_suffix_is_what_chatml_writes_after_an_answer(tiny_model_dir):
    assert turn_suffix(load_tokenizer(tiny_model_dir)) == "<|im_end|>\n"


def test_exact_match_ignores_only_whitespace():
    assert exact_match(" 1 2  3\n", "1 2 3") == 1.0
    assert exact_match("1 2 3.", "1 2 3") == 0.0
    assert exact_match("ABC", "abc") == 0.0


def test_char_similarity_gives_partial_credit():
    from engine.evaluate.scorers import char_similarity
    assert char_similarity("1 2 3", "1 2 3") == 1.0
    assert 0.5 < char_similarity("1 2 4", "1 2 3") < 1.0
    assert char_similarity("", "abc") == 0.0


def test_a_users_scorer_is_named_module_colon_function(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text("def prefix(prediction, reference):\n"
                                            "    return prediction.startswith(reference[:2])\n")
    monkeypatch.chdir(tmp_path)
    scorer = resolve_scorer("my_scorers:prefix")
    assert score(scorer, ["abz", "xyz"], ["abc", "abc"]) == 0.5
    assert scorer_identity("my_scorers:prefix").startswith("my_scorers:prefix@")
    assert scorer_identity("exact_match") == "exact_match"


@pytest.mark.parametrize("name, message", [("nope", "expected one of"), ("no_such_module:f", "cannot import"),
                                           ("engine.evaluate.scorers:missing", "has no function")])
def test_a_bad_scorer_name_is_a_recipe_error(name, message):
    with pytest.raises(RecipeError, match=message):
        resolve_scorer(name)


def test_a_score_outside_zero_to_one_is_reported_as_the_scorers_bug():
    with pytest.raises(ValueError, match="returned 2.0 for reference 'x'"):
        score(lambda p, r: 2, ["x"], ["x"])


def test_lm_eval_tasks_without_lm_eval_stop_the_recipe():
    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval is installed here: the recipe key is allowed")
    check_lm_eval(EvaluationSection())  # no tasks: nothing needed
    with pytest.raises(RecipeError, match="lm-eval is not installed"):
        check_lm_eval(EvaluationSection(lm_eval_tasks=["hellaswag"]))


def test_evaluation_infer_backend_is_a_recipe_key_and_auto_picks_transformers_without_vllm():
    from engine.evaluate.compare import generation_backend
    assert load_recipe("tiny", {"evaluation.infer_backend": "vllm"})[0].evaluation.infer_backend == "vllm"
    with pytest.raises(RecipeError, match="evaluation.infer_backend"):
        load_recipe("tiny", {"evaluation.infer_backend": "sglang"})
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM can run here: auto picks it")
    assert generation_backend(EvaluationSection()) == "huggingface"
    assert generation_backend(EvaluationSection(infer_backend="huggingface")) == "huggingface"


def test_evaluation_on_vllm_where_it_cannot_run_stops_the_recipe_before_any_work():
    import json
    from assets.resource import validated_recipe
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM can run here: the recipe key is allowed")
    with pytest.raises(RecipeError) as stopped:
        validated_recipe("tiny", json.dumps({"evaluation.infer_backend": "vllm"}))
    message = str(stopped.value)
    assert message.startswith("evaluation.infer_backend is vllm, but vLLM needs its package and a CUDA GPU")
    assert "\n" not in message


RESULTS = {stage: {"perplexity": 10.0, "accuracy": 0.5, "similarity": 0.7, "reward_score": 1.0,
                   "example_scores": [1.0, 0.0] * 4, "example_rewards": [0.5, 1.5] * 4} for stage in
           ("base", "sft", "dpo", "merged", "gptq", "awq")}


def test_the_comparison_table_has_one_row_per_stage_in_graph_order():
    lines = comparison_markdown(RESULTS).splitlines()
    assert lines[0] == "| model | perplexity | accuracy | similarity | reward score |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["base", "sft", "dpo", "merged", "gptq", "awq"]


def test_dpo_gate_says_by_how_much_dpo_fell_short_with_n_and_the_paired_interval():
    # per-question differences -0.1, -0.3, -0.2, -0.2: mean -0.2, s = 0.0816, half-width 1.96 * s / 2 = 0.0800
    sft = {"reward_score": 1.0, "example_rewards": [0.5, 1.0, 1.5, 1.0]}
    dpo = {"reward_score": 0.8, "example_rewards": [0.4, 0.7, 1.3, 0.8]}
    ok, detail = dpo_gate(sft, dpo, 0.0)
    assert not ok
    assert detail == ("DPO mean reward score 0.8 vs SFT 1.0: gain -0.2000 (95% CI -0.2800..-0.1200, n=4; 0 answers "
                      "scored higher, 4 lower, 0 the same), required >= +0.0000, short by 0.2000")
    # differences 0.3, 0.4, 0.2, 0.0: mean 0.225, s = 0.1708, half-width 1.96 * s / 2 = 0.1674
    better = {"reward_score": 1.3, "example_rewards": [0.8, 1.4, 1.7, 1.0]}
    assert dpo_gate(sft, better, 0.1) == (True, "DPO mean reward score 1.3 vs SFT 1.0: gain +0.3000 (95% CI "
                                                "+0.0576..+0.3924, n=4; 3 answers scored higher, 0 lower, 1 the same), "
                                                "required >= +0.1000")
    # a negative bound lets DPO score worse than SFT: the detail says so
    assert dpo_gate(sft, dpo, -0.25)[1].endswith("required >= -0.2500 (a tolerance: DPO may score 0.2500 below SFT)")


def test_dpo_gate_refuses_scores_of_different_questions():
    sft = {"reward_score": 1.0, "example_rewards": [1.0, 1.0]}
    with pytest.raises(ValueError, match="same examples: 3 values against 2"):
        dpo_gate(sft, {"reward_score": 1.0, "example_rewards": [1.0, 1.0, 1.0]}, 0.0)


def test_quantized_gate_names_the_number_that_failed_with_n_and_the_paired_interval():
    # one question of ten lost, none gained; Bonett-Price: p12 = 2/12, p21 = 1/12,
    # half-width 1.96 * sqrt((3/12 - (1/12)²) / 12) = 0.2789 around 1/12
    merged = {"accuracy": 0.60, "perplexity": 10.0, "example_scores": [1.0] * 6 + [0.0] * 4}
    awq = {"accuracy": 0.50, "perplexity": 10.5, "example_scores": [1.0] * 5 + [0.0] * 5}
    ok, detail = quantized_gate("awq", merged, awq, 0.05, 1.5)
    assert not ok and "dropped 0.1000 (95% CI -0.1956..+0.3623, n=10), allowed 0.05 (over by 0.0500)" in detail
    assert detail.endswith("perplexity 10.5 = x1.0500 merged, allowed x1.5")
    # the same answers to all ten: no drop, and still an interval as wide as ten questions leave it
    ok, detail = quantized_gate("gptq", merged, {**merged, "perplexity": 20.0}, 0.05, 1.5)
    assert not ok and "dropped 0.0000 (95% CI -0.2310..+0.2310, n=10)" in detail
    assert "x2.0000 merged, allowed x1.5 (over by 0.5000)" in detail
    assert quantized_gate("gptq", merged, {**merged, "accuracy": 0.58, "perplexity": 11.0}, 0.05, 1.5)[0]


def test_gates_read_their_thresholds_from_the_recipe():
    recipe, _ = load_recipe("tiny", {"quantize.max_accuracy_drop": 0.0, "dpo.min_reward_gain": 0.5})
    results = {**RESULTS, "awq": {**RESULTS["awq"], "accuracy": 0.49},
               "ppo": {"configured": False, "reason": "ppo is not in the recipe's stages"}}
    verdicts = {name: ok for name, (ok, _) in gates(results, recipe).items()}
    assert verdicts == {"dpo_not_worse_than_sft": False, "ppo_not_worse_than_sft": None,
                        "grpo_not_worse_than_sft": None, "gptq_within_budget": True, "awq_within_budget": False}
    ppo = {**RESULTS["dpo"], "configured": True}
    recipe, _ = load_recipe("tiny", {"stages": ["sft", "rm", "ppo"], "ppo.min_reward_gain": -100.0})
    assert gates({**results, "ppo": ppo}, recipe)["ppo_not_worse_than_sft"][0] is True


def test_an_evaluation_records_each_questions_score_and_reward_and_their_intervals(tiny_model_dir, formatted_dir,
                                                                                  tmp_path):
    from transformers import AutoModelForSequenceClassification
    from engine.evaluate.compare import evaluate_model
    from engine.models.load import load_causal_lm
    from engine.evaluate.stats import mean_interval, wilson_interval
    torch.manual_seed(0)  # a random reward head: scores that differ per answer, so their interval has a width
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(tmp_path)
    cfg = EvaluationSection(max_samples=12, max_new_tokens=4)
    m = evaluate_model(lambda: load_causal_lm(tiny_model_dir, torch.float32), tiny_model_dir, formatted_dir, tmp_path,
                       cfg, torch.float32)
    assert m["samples"] == len(m["example_scores"]) == len(m["example_rewards"]) == 12
    assert m["generation_backend"] == "huggingface"
    assert set(m["example_scores"]) <= {0.0, 1.0}  # exact match: each question right or wrong
    wins = int(sum(m["example_scores"]))
    assert m["accuracy"] == round(wins / 12, 4)
    assert m["accuracy_ci"] == wilson_interval(wins, 12).bounds()
    rewards = mean_interval(m["example_rewards"])
    assert m["reward_score"] == pytest.approx(rewards.estimate, abs=1e-4)
    assert m["reward_score_ci"] == pytest.approx(rewards.bounds(), abs=1e-4) and rewards.high > rewards.low
