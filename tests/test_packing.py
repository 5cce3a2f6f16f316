"""Packed SFT batches are correct: several rows flattened into one sequence (TRL's padding-free collator, what
`sft.padding_free` and `sft.packing` train with) give every row the same logits, loss and gradients as that row run
on its own, for each attention implementation tuneline trains with on a CPU (sdpa as engine/models/attention.py's row
attention, and eager). Without the per-row positions, rows would attend to one another: the control case shows the
test can see it."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from engine.models.attention import ROW_SDPA, length_groups, row_sdpa, training_attention
from engine.recipe import SftSection

LENGTHS = (9, 14, 6, 11)
MIXED = (70, 100, 9, 120, 97)  # the row attention's groups: (120, 100, 97), (70,), (9,)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(config).eval()


def make_rows(lengths: tuple[int, ...]) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    found = []
    for length in lengths:  # a prompt of 3 tokens (no loss), then the answer
        ids = torch.randint(1, 97, (length,), generator=generator).tolist()
        found.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return found


@pytest.fixture(scope="module")
def rows():
    return make_rows(LENGTHS)


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


IMPLEMENTATIONS = [training_attention(SftSection().attn_implementation), "eager"]


def packed_batch(rows: list[dict]) -> dict:
    """The flattened batch as TRL's compute_loss hands it to the model: ids, restarting positions and the row
    boundaries (cu_seq_lens_*, max_length_*, seq_idx), no attention mask, no labels, no KV cache."""
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)) and "attention_mask" not in batch
    return {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}


@pytest.mark.parametrize("lengths", [LENGTHS, MIXED])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_packed_batch_gives_each_row_its_own_loss(model, lengths, implementation):
    rows = make_rows(lengths)
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        packed = model(**packed_batch(rows)).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    assert torch.allclose(packed, alone, atol=1e-4), implementation
    for p, a in zip(row_losses(packed, rows), row_losses(alone, rows), strict=True):
        assert p.item() == pytest.approx(a.item(), abs=1e-4)
    # TRL's labels keep each row's first token out of the loss: no row learns to predict the next row's start
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    starts = torch.cumsum(torch.tensor((0, *lengths[:-1])), 0)
    assert (batch["labels"][0, starts] == -100).all()


@pytest.mark.parametrize("lengths", [LENGTHS, MIXED])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_packed_batch_gives_each_row_its_own_gradients(model, lengths, implementation):
    """What training reads: the packed batch's summed loss has the gradients of the rows' losses added up."""
    rows = make_rows(lengths)
    model.set_attn_implementation(implementation)
    weights = [p for p in model.parameters()]

    def gradients(loss):
        return torch.autograd.grad(loss, weights)
    packed = gradients(sum(row_losses(model(**packed_batch(rows)).logits[0], rows)))
    alone = gradients(sum(row_losses(torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
                                                for r in rows]), rows)))
    for p, a in zip(packed, alone, strict=True):
        assert torch.allclose(p, a, atol=1e-4), implementation


def test_rows_of_similar_length_share_one_attention_call():
    assert length_groups(list(LENGTHS)) == [[1, 3, 0, 2]]  # short rows: one call, longest first
    assert length_groups(list(MIXED)) == [[3, 1, 4], [0], [2]]
    assert length_groups([300, 200, 100]) == [[0], [1], [2]]  # none within 0.8x of another


@pytest.mark.parametrize("lengths", [LENGTHS, MIXED])
def test_row_attention_runs_each_row_at_its_own_length(model, lengths, monkeypatch):
    """The row attention is what runs (not sdpa over the flattened batch under a block mask, which the tests above
    would pass too): scaled_dot_product_attention sees causal rows of similar length, as wide as their longest."""
    rows = make_rows(lengths)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        seen.append((tuple(query.shape), attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model.set_attn_implementation(ROW_SDPA)
    with torch.no_grad():
        model(**packed_batch(rows))
    heads, dim = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    calls = [((len(g), heads, max(lengths[r] for r in g), dim), True, True) for g in length_groups(list(lengths))]
    assert seen == calls * model.config.num_hidden_layers


def test_row_attention_runs_in_float32_under_cpu_autocast(model, monkeypatch):
    """On a CPU, bf16 autocast would hand sdpa bf16 inputs (its CPU kernel is slower in bf16): the row attention
    gives it float32, flattened or not, and returns the autocast dtype, like the layers around it."""
    dtypes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        dtypes.append(query.dtype)
        return sdpa(query, key, value, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    attention = model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(1, 4, 12, 16, generator=generator).bfloat16()
    key, value = (torch.randn(1, 2, 12, 16, generator=generator).bfloat16() for _ in range(2))
    starts = torch.tensor([0, 5, 12], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        flat, _ = row_sdpa(attention, query, key, value, None, cu_seq_lens_q=starts, max_length_q=7)
        plain, _ = row_sdpa(attention, query, key, value, None)
    assert dtypes == [torch.float32, torch.float32] and flat.dtype == plain.dtype == torch.bfloat16
    # the first row is the first 5 tokens attended alone, so both agree there
    assert torch.allclose(flat[0, :5].float(), plain[0, :5].float(), atol=1e-2)
    assert not torch.allclose(flat[0, 5:].float(), plain[0, 5:].float(), atol=1e-2)  # the second row's own start


def test_without_row_positions_rows_would_see_each_other(model, rows):
    """The control: the same flattened sequence with positions running on (what a naive packer does) changes the
    later rows' logits, so the test above would notice cross-row attention."""
    model.set_attn_implementation(training_attention(SftSection().attn_implementation))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    with torch.no_grad():
        running_on = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    first = LENGTHS[0]
    assert torch.allclose(running_on[:first], alone[:first], atol=1e-4)  # the first row sees nothing before it
    assert not torch.allclose(running_on[first:], alone[first:], atol=1e-2)


def padded_batch(rows: list[dict], side: str) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        place = slice(0, len(row["input_ids"])) if side == "right" else slice(width - len(row["input_ids"]), width)
        ids[i, place], mask[i, place] = torch.tensor(row["input_ids"]), 1
    return {"input_ids": ids, "attention_mask": mask, "use_cache": False}


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_right_padded_batch_attends_causally_without_a_mask_and_keeps_its_results(model, side, monkeypatch):
    """DPO's and the reward model's batches are right-padded: under a causal mask a row's tokens never see the
    padding after them, so the row attention drops the padding mask (sdpa then runs its causal kernel, which on
    CUDA is FlashAttention; with a mask it is not) and every real token's logits and gradients are unchanged.
    A left-padded batch (generation) keeps its mask."""
    rows = make_rows(MIXED)
    batch = padded_batch(rows, side)
    real = batch["attention_mask"].bool()
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        masks.append((attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    def logits_and_gradients(implementation):
        model.set_attn_implementation(implementation)
        logits = model(**batch).logits
        loss = (logits.log_softmax(-1)[..., 0] * real).sum()  # only the real tokens count
        return logits[real].detach(), torch.autograd.grad(loss, list(model.parameters()))
    plain, plain_gradients = logits_and_gradients("sdpa")
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ours, our_gradients = logits_and_gradients(ROW_SDPA)
    unmasked = side == "right"
    assert masks == [(unmasked, unmasked)] * model.config.num_hidden_layers
    assert torch.allclose(ours, plain, atol=1e-4)
    for mine, theirs in zip(our_gradients, plain_gradients, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)
