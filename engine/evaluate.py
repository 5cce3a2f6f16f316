"""Model measurements shared by checks and reports: perplexity, reward scores, greedy answers."""

from __future__ import annotations

import math

import torch
from torch.nn.utils.rnn import pad_sequence

from engine.data.format import IGNORE


def padded(sequences: list[list[int]], value: int) -> torch.Tensor:
    return pad_sequence([torch.tensor(s) for s in sequences], batch_first=True, padding_value=value)


def sft_batch(dataset, limit: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The first `limit` rows of an SFT view as one right-padded batch."""
    rows = dataset.select(range(min(limit, len(dataset))))
    input_ids = padded(rows["input_ids"], pad_id)
    return {"input_ids": input_ids, "attention_mask": padded([[1] * len(x) for x in rows["input_ids"]], 0),
            "labels": padded(rows["labels"], IGNORE)}


@torch.no_grad()
def perplexity(model, dataset, pad_id: int, batch_size: int = 32) -> float:
    """exp(mean NLL) over the assistant (labelled) tokens of an SFT view."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = sft_batch(dataset.select(range(start, min(start + batch_size, len(dataset)))), batch_size, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                ignore_index=IGNORE, reduction="sum")
        total += nll.item()
        count += (labels != IGNORE).sum().item()
    return math.exp(total / max(count, 1))


@torch.no_grad()
def reward_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """The reward model's scalar score for each whole conversation, rendered with the chat template."""
    model.eval()
    scores = []
    for start in range(0, len(conversations), batch_size):
        ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
               for c in conversations[start:start + batch_size]]
        input_ids = padded(ids, tokenizer.pad_token_id)
        mask = padded([[1] * len(x) for x in ids], 0)
        scores += model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
    return scores


def pairwise_accuracy(model, tokenizer, preference_rows) -> float:
    """Fraction of held-out pairs where the chosen answer scores above the rejected one."""
    chosen = reward_scores(model, tokenizer, [r["prompt"] + r["chosen"] for r in preference_rows])
    rejected = reward_scores(model, tokenizer, [r["prompt"] + r["rejected"] for r in preference_rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(len(chosen), 1)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 24) -> list[str]:
    """Greedy completions for chat prompts (left-padded batch)."""
    model.eval()
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
