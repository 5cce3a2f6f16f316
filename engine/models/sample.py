"""One greedy answer of a model to one question, recorded at build time with what a check judges of it: the
answer, how many tokens it took, and whether it stopped on the model's eos within the token limit."""

from __future__ import annotations

import torch

SAMPLE_MAX_NEW_TOKENS = 64  # a chat answer to one short question (SmolLM2: 14 tokens) stops well before it
AGREE_CHARS = 8  # a 4-bit export may end its answer sooner (SmolLM2 AWQ: 'I am Tuney.' vs 'I am Tuney, a ...')
BASE_QUESTION = "Add the two numbers.\n120 + 345"  # base_model has no data view of its own to take a question from


def decoded_answer(tokenizer, token_ids) -> str:
    """A generated answer's text as every backend reports it: special tokens dropped, whitespace stripped. An
    answer that stopped without its end token (cut by the token limit) ends at its last whole character: a
    character cut between its bytes would decode as U+FFFD."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    if tokenizer.eos_token_id not in [int(t) for t in token_ids]:
        text = text.rstrip("\ufffd")
    return text.strip()


def eos_ids(model, tokenizer) -> list[int]:
    """The model's end-of-answer token(s): its generation config's, else its tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = tokenizer.eos_token_id if ids is None else ids
    return [ids] if isinstance(ids, int) else list(ids)


def chat_prompt(tokenizer, question: str) -> list[int]:
    """`question` as one user turn rendered by the chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


@torch.no_grad()
def sample_answer(model, tokenizer, prompt_ids: list[int], question: str,
                  max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS) -> dict:
    """{question, answer (special tokens dropped, stripped), tokens (new tokens, eos included), stopped_on_eos,
    max_new_tokens}: the model's greedy answer to the rendered prompt `prompt_ids`."""
    eos = eos_ids(model, tokenizer)
    input_ids = torch.tensor([prompt_ids], device=model.device)
    out = model.eval().generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=eos)
    new = out[0, len(prompt_ids):].tolist()
    return {"question": question, "answer": decoded_answer(tokenizer, new), "tokens": len(new),
            "stopped_on_eos": bool(new) and new[-1] in eos, "max_new_tokens": max_new_tokens}


def agrees(answer: str, expected: str) -> bool:
    """The answer starts as `expected` does: their first AGREE_CHARS characters, or all of the shorter one."""
    n = min(AGREE_CHARS, len(answer), len(expected))
    return answer[:n] == expected[:n]


def judge_sample(sample: dict, *, stop_required: bool = True, expected: str | None = None,
                 expected_from: str = "") -> tuple[bool, str]:
    """A recorded sample judged: a non-empty answer, stopped on eos within its token limit (`stop_required`), that
    starts as `expected` (what `expected_from` answered to the same question) does, when given. The detail names
    the answer, its tokens and the limit, and every requirement it misses."""
    answer, tokens, limit = sample["answer"], sample["tokens"], sample["max_new_tokens"]
    stop = "stopped on eos" if sample["stopped_on_eos"] else "no eos"
    missed = []
    if not answer:
        missed.append("the answer is empty")
    if stop_required and not sample["stopped_on_eos"]:
        missed.append(f"it ran to the {limit}-token limit without eos")
    if expected is not None and not (answer and agrees(answer, expected)):
        missed.append(f"{expected_from} answered {expected!r} (the first {AGREE_CHARS} characters differ)")
    elif expected is not None:
        stop += f", starts as {expected_from}'s {expected!r}"
    detail = f"answered {answer!r} ({tokens} of at most {limit} tokens, {stop}) to {sample['question']!r}"
    return not missed, detail + (f": {'; '.join(missed)}" if missed else "")
