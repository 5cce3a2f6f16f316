"""Packed SFT batches are correct: several rows flattened into one sequence (TRL's padding-free collator, what
`sft.packing` trains with) give every row the same logits and loss as that row run on its own, for the attention
implementation tuneline trains with. Without the per-row positions, rows would attend to one another: the control
case shows the test can see it."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from engine.recipe import SftSection

LENGTHS = (9, 14, 6, 11)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def rows():
    generator = torch.Generator().manual_seed(1)
    found = []
    for length in LENGTHS:  # a prompt of 3 tokens (no loss), then the answer
        ids = torch.randint(1, 97, (length,), generator=generator).tolist()
        found.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return found


def row_losses(logits: torch.Tensor, rows: list[dict]) -> list[torch.Tensor]:
    """Summed next-token loss of each row, from logits laid out row after row (packed) along one sequence."""
    losses, start = [], 0
    for row in rows:
        n = len(row["input_ids"])
        labels = torch.tensor(row["labels"])
        losses.append(torch.nn.functional.cross_entropy(logits[start:start + n - 1], labels[1:], ignore_index=-100,
                                                        reduction="sum"))
        start += n
    return losses


def test_a_packed_batch_gives_each_row_its_own_loss(model, rows):
    implementation = SftSection().attn_implementation
    model.set_attn_implementation(implementation)
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert batch["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in batch
    with torch.no_grad():
        # as TRL's compute_loss calls it: no KV cache, the only case where transformers reads row boundaries from
        # the restarting position ids (with a cache, sdpa would let rows attend to each other)
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    assert torch.allclose(packed, alone, atol=1e-4), implementation
    for p, a in zip(row_losses(packed, rows), row_losses(alone, rows), strict=True):
        assert p.item() == pytest.approx(a.item(), abs=1e-4)
    # TRL's labels keep each row's first token out of the loss: no row learns to predict the next row's start
    starts = torch.cumsum(torch.tensor((0, *LENGTHS[:-1])), 0)
    assert (batch["labels"][0, starts] == -100).all()


def test_without_row_positions_rows_would_see_each_other(model, rows):
    """The control: the same flattened sequence with positions running on (what a naive packer does) changes the
    later rows' logits, so the test above would notice cross-row attention."""
    model.set_attn_implementation(SftSection().attn_implementation)
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    with torch.no_grad():
        running_on = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    first = LENGTHS[0]
    assert torch.allclose(running_on[:first], alone[:first], atol=1e-4)  # the first row sees nothing before it
    assert not torch.allclose(running_on[first:], alone[first:], atol=1e-2)
