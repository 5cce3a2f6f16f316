"""Model measurements shared by checks and reports: perplexity, reward scores, greedy answers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.utils.rnn import pad_sequence

from engine.runtime.progress import Progress
from engine.data.constants import IGNORE
from engine.models.device import mixed_autocast, to_device
from engine.models.sample import decoded_answer


def padded(sequences: list[list[int]], value: int) -> torch.Tensor:
    return pad_sequence([torch.tensor(s) for s in sequences], batch_first=True, padding_value=value)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, longest rows first: a batch is padded to its longest row, so rows of
    like length together pad little. Ties keep file order, so the batches are the same on every run."""
    # transformers' get_length_grouped_indices shuffles (a training sampler); evaluation wants one fixed order
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def in_file_order(lengths: list[int], batch_size: int, run: Callable[[list[int]], list]) -> list:
    """`run` over length-grouped batches of row indices (one result per index), its results put back in the rows'
    original order."""
    results: list = [None] * len(lengths)
    for batch in Progress("scoring", total=len(lengths), unit="items").each(length_batches(lengths, batch_size), len):
        for index, result in zip(batch, run(batch), strict=True):
            results[index] = result
    return results


def sft_batch(dataset, limit: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The first `limit` rows of an SFT view as one right-padded batch."""
    rows = dataset.select(range(min(limit, len(dataset))))
    input_ids = padded(rows["input_ids"], pad_id)
    return {"input_ids": input_ids, "attention_mask": padded([[1] * len(x) for x in rows["input_ids"]], 0),
            "labels": padded(rows["labels"], IGNORE)}


@torch.no_grad()
def perplexity(model, dataset, pad_id: int, batch_size: int = 32) -> float:
    """exp(mean NLL) over the assistant (labelled) tokens of an SFT view. The model runs in its own dtype on its own
    device; the log-softmax and the sum are float32 per batch, the total a Python float (double)."""
    model.eval()
    total, count = 0.0, 0
    batches = length_batches([len(ids) for ids in dataset["input_ids"]], batch_size)
    for indices in Progress("perplexity", total=len(dataset), unit="items").each(batches, len):
        batch = to_device(sft_batch(dataset.select(indices), batch_size, pad_id), model)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                ignore_index=IGNORE, reduction="sum")
        total += nll.item()
        count += (labels != IGNORE).sum().item()
    return math.exp(total / max(count, 1))


def reward_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """The reward model's scalar score for each whole conversation, rendered with the chat template."""
    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in conversations]
    return reward_scores_of_ids(model, ids, tokenizer.pad_token_id, batch_size)


@torch.no_grad()
def reward_scores_of_ids(model, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> list[float]:
    """The reward model's scalar score for each token sequence (right-padded, length-grouped batches), in order."""
    model.eval()

    def score_batch(indices: list[int]) -> list[float]:
        ids = [sequences[i] for i in indices]
        input_ids = padded(ids, pad_id).to(model.device)
        mask = padded([[1] * len(x) for x in ids], 0).to(model.device)
        with mixed_autocast(model):
            return model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
    return in_file_order([len(s) for s in sequences], batch_size, score_batch)


def pairwise_accuracy(model, tokenizer, preference_rows) -> float:
    """Fraction of held-out pairs where the chosen answer scores above the rejected one."""
    chosen = reward_scores(model, tokenizer, [r["prompt"] + r["chosen"] for r in preference_rows])
    rejected = reward_scores(model, tokenizer, [r["prompt"] + r["rejected"] for r in preference_rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(len(chosen), 1)


def greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 24) -> list[str]:
    """Greedy completions for chat prompts."""
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in prompts]
    return greedy_from_ids(model, tokenizer, ids, max_new_tokens)


@torch.no_grad()
def greedy_from_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy completions for already-rendered prompt token ids (left-padded, length-grouped batches on the model's
    device), in order."""
    model.eval()

    def answer_batch(indices: list[int]) -> list[str]:
        ids = [prompts[i] for i in indices]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids], device=model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return [decoded_answer(tokenizer, row[width:]) for row in out]
    return in_file_order([len(p) for p in prompts], batch_size, answer_batch)


@dataclass(frozen=True)
class AnswerExample:
    """One held-out SFT row as a question: the tokens before its last answer, and that answer's text."""
    prompt_ids: list[int]
    reference: str


def answer_examples(dataset, tokenizer, limit: int) -> list[AnswerExample]:
    """The first `limit` rows of an SFT view's eval split: its last trained span is the reference answer."""
    examples = []
    for row in dataset.select(range(min(limit, len(dataset)))):
        labels = row["labels"]
        end = max(i for i, label in enumerate(labels) if label != IGNORE)
        start = end
        while start > 0 and labels[start - 1] != IGNORE:
            start -= 1
        reference = tokenizer.decode(row["input_ids"][start:end + 1], skip_special_tokens=True).strip()
        examples.append(AnswerExample(row["input_ids"][:start], reference))
    return examples


def eval_question(evaluation, tokenizer) -> tuple[list[int], str]:
    """(prompt ids, question as the chat template rendered it) of the SFT view's first eval row."""
    prompt_ids = answer_examples(evaluation, tokenizer, 1)[0].prompt_ids
    return prompt_ids, tokenizer.decode(prompt_ids)


def turn_suffix(tokenizer) -> str:
    """What the chat template writes after an assistant message's content (ChatML: "<|im_end|>\n")."""
    user = [{"role": "user", "content": "x"}]
    prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": "y"}], tokenize=False)
    return full[len(prefix):].split("y", 1)[1]


def answered_sequences(tokenizer, examples: list[AnswerExample], answers: list[str]) -> list[list[int]]:
    """Each prompt followed by an answer, closed as the chat template closes a turn: what the reward model reads."""
    suffix = turn_suffix(tokenizer)
    return [e.prompt_ids + tokenizer(a + suffix, add_special_tokens=False)["input_ids"]
            for e, a in zip(examples, answers, strict=True)]
