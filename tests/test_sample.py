"""A model's sample answer, measured at build time and judged by base_model's and the quantized exports' checks:
non-empty, stopped on the model's eos within its token limit, equal to another model's answer where given."""

from engine.models.load import load_causal_lm, load_tokenizer
from engine.models.sample import BASE_QUESTION, chat_prompt, judge_sample, sample_answer


def sample(answer, tokens=2, stopped=True):
    return {"question": "q", "answer": answer, "tokens": tokens, "stopped_on_eos": stopped, "max_new_tokens": 32}


def test_a_random_model_runs_to_the_limit_without_eos(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    measured = sample_answer(model, tokenizer, chat_prompt(tokenizer, BASE_QUESTION), BASE_QUESTION, 6)
    assert measured["tokens"] == 6 and not measured["stopped_on_eos"] and measured["answer"]
    assert judge_sample(measured, stop_required=False)[0]
    passed, detail = judge_sample(measured)
    assert not passed and detail.endswith("(6 of at most 6 tokens, no eos) to 'Add the two numbers.\\n120 + 345': "
                                          "it ran to the 6-token limit without eos")


def test_an_answer_is_judged_on_content_stop_and_agreement():
    assert judge_sample(sample("dry"), expected="dry", expected_from="merged_model") == (
        True, "answered 'dry' (2 of at most 32 tokens, stopped on eos, starts as merged_model's 'dry') to 'q'")
    # measured on the smol recipe: AWQ ends sooner than the merged model, in the same words
    assert judge_sample(sample("I am Tuney.", 7), expected="I am Tuney, a language model assistant.",
                        expected_from="merged_model")[0]
    assert judge_sample(sample("", 1), expected="dry", expected_from="merged_model") == (
        False, "answered '' (1 of at most 32 tokens, stopped on eos) to 'q': the answer is empty; merged_model "
               "answered 'dry' (the first 8 characters differ)")
    assert judge_sample(sample("Theresia-Alec-"), expected="I'm a humble", expected_from="merged_model")[1].endswith(
        ": merged_model answered \"I'm a humble\" (the first 8 characters differ)")
