"""The eval passes batch rows grouped by length and give the same numbers as one row at a time, in file order."""

import math

import pytest
import torch

from engine.data.constants import IGNORE
from engine.evaluate.measure import greedy_from_ids, length_batches, perplexity, reward_scores_of_ids

BATCH = 4  # small, so that a dozen rows make several batches, each padded


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, formatted_dir):
    """The tiny policy in float32, its tokenizer and the eval split of the formatted SFT view."""
    from datasets import load_from_disk
    from engine.models.load import load_causal_lm, load_tokenizer
    return (load_causal_lm(tiny_model_dir, torch.float32), load_tokenizer(tiny_model_dir),
            load_from_disk(formatted_dir / "sft")["eval"])


def mixed_lengths(sequences: list[list[int]], n: int) -> list[list[int]]:
    """`n` sequences, cut to lengths that jump around, so that file order puts short rows beside long ones."""
    return [s[:max(4, len(s) - 7 * (i % 5))] for i, s in enumerate(sequences[:n])]


def padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    """Tokens a pass computes when each batch is padded to its longest row."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def test_length_batches_cover_every_row_once_and_pad_less_than_file_order():
    lengths = [3, 50, 4, 48, 5, 47, 6, 45, 7, 44]
    grouped = length_batches(lengths, BATCH)
    assert sorted(i for batch in grouped for i in batch) == list(range(len(lengths)))
    assert [lengths[i] for i in grouped[0]] == [50, 48, 47, 45]  # longest first
    file_order = [list(range(start, min(start + BATCH, len(lengths)))) for start in range(0, len(lengths), BATCH)]
    assert padded_tokens(lengths, grouped) < padded_tokens(lengths, file_order)
    assert length_batches([5, 5, 5], 2) == [[0, 1], [2]]  # ties keep file order


def test_greedy_answers_in_batches_equal_answers_one_row_at_a_time(tiny):
    model, tokenizer, evaluation = tiny
    # rows of the eval split cut short: prompts of mixed lengths (left padding in every batch but the last)
    prompts = mixed_lengths(evaluation["input_ids"], 12)
    assert len({len(p) for p in prompts}) > 3
    batched = greedy_from_ids(model, tokenizer, prompts, max_new_tokens=8, batch_size=BATCH)
    alone = [greedy_from_ids(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == alone
    assert len(set(alone)) > 1  # the answers differ per prompt, so an order mix-up would show


def unbatched_perplexity(model, dataset) -> float:
    """exp(mean NLL) over labelled tokens, each row run alone (no padding at all)."""
    total, count = 0.0, 0
    for row in dataset:
        input_ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"][1:])
        logits = model(input_ids=input_ids).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum").item()
        count += (labels != IGNORE).sum().item()
    return math.exp(total / count)


@torch.no_grad()
def test_perplexity_in_length_grouped_batches_equals_the_unbatched_computation(tiny):
    model, tokenizer, evaluation = tiny
    rows = evaluation.select(range(24))
    assert len(set(len(ids) for ids in rows["input_ids"])) > 3
    assert perplexity(model, rows, tokenizer.pad_token_id, batch_size=BATCH) == pytest.approx(
        unbatched_perplexity(model, rows), rel=1e-5)


def test_reward_scores_in_batches_equal_scores_one_row_at_a_time(tiny_model_dir, tiny):
    from transformers import AutoModelForSequenceClassification
    _, tokenizer, evaluation = tiny
    torch.manual_seed(0)  # a random reward head: every row its own score
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1,
                                                                      torch_dtype=torch.float32)
    sequences = mixed_lengths(evaluation["input_ids"], 12)
    batched = reward_scores_of_ids(reward_model, sequences, tokenizer.pad_token_id, batch_size=BATCH)
    alone = [reward_scores_of_ids(reward_model, [s], tokenizer.pad_token_id, batch_size=1)[0] for s in sequences]
    assert batched == pytest.approx(alone, rel=1e-4, abs=1e-5)  # a padded batch sums in another order
    assert len({round(s, 4) for s in alone}) > 1
