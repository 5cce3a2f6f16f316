"""TRL's fused LM head under engine/train/lm_head.py: on a CPU it projects only the labelled positions (as it does
on CUDA), and every output and gradient is what it was when it projected them all, up to rounding. The training
stages that use the head run under it."""

import importlib
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from engine.recipe import load_recipe
from engine.train.lm_head import labelled_positions_only

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")  # all DPOTrainer may ask for


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(config).eval()
    add_fused_lm_head(model, outputs=OUTPUTS)
    return model


def batch() -> dict:
    """Two rows, a prompt (no labels) then an answer, the second right-padded: 11 of the 2 x 15 next-token
    positions have a label."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (2, 16), generator=generator)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :10] = -100
    labels[1, :7] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def scored(model, monkeypatch, inputs: dict | None = None, autocast: bool = False):
    """(positions each head call projected, the head's per-token outputs, gradients of the log-probs' sum)."""
    projected = []
    function = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return function.apply(hidden, *args)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**(inputs or batch()), fused_lm_head=True, use_cache=False)
        weights = [p for p in model.parameters()]
        gradients = torch.autograd.grad(out.log_probs.sum(), weights)
    monkeypatch.undo()
    return projected, {name: getattr(out, name).detach() for name in OUTPUTS}, gradients


@pytest.mark.parametrize("autocast, tolerance", [(False, 1e-5), (True, 2e-2)])  # bf16: another summing order
def test_on_a_cpu_only_the_labelled_positions_are_projected_and_nothing_else_changes(model, monkeypatch, autocast,
                                                                                     tolerance):
    every, every_out, every_grads = scored(model, monkeypatch, autocast=autocast)
    with labelled_positions_only():
        labelled, out, grads = scored(model, monkeypatch, autocast=autocast)
    labels = batch()["labels"][:, 1:]
    assert every == [2 * 15] and labelled == [int((labels != -100).sum())] == [11]
    for name in OUTPUTS:
        assert torch.allclose(out[name].float(), every_out[name].float(), atol=tolerance), name
        assert (out[name][labels == -100] == 0).all(), name  # unscored positions read as zero, as before
    for mine, theirs in zip(grads, every_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=tolerance)


def test_a_batch_without_a_label_gives_zeros_and_zero_gradients(model, monkeypatch):
    """Truncation can leave a micro-batch with no answer token: nothing is projected, and training goes on."""
    inputs = batch() | {"labels": torch.full((2, 16), -100)}
    with labelled_positions_only():
        projected, out, gradients = scored(model, monkeypatch, inputs)
    assert projected == [0] and (out["log_probs"] == 0).all()
    assert all((g == 0).all() for g in gradients)


def test_the_switch_is_put_back(model, monkeypatch):
    decide = trl_utils._use_triton
    with pytest.raises(RuntimeError), labelled_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
        raise RuntimeError("training failed")
    assert trl_utils._use_triton is decide and not decide(torch.device("cpu"))
    assert scored(model, monkeypatch)[0] == [2 * 15]


class Stop(Exception):
    pass


@pytest.mark.parametrize("stage, trains, entry", [("sft", "train_sft", "train_sft_adapter"),
                                                 ("dpo", "train_dpo", "train_dpo_adapter")])
def test_training_stages_train_under_it(stage, trains, entry, tmp_path, monkeypatch):
    module = importlib.import_module(f"engine.train.{stage}")
    seen = []

    def probe(*args, **kwargs):
        seen.append(trl_utils._use_triton(torch.device("cpu")))
        raise Stop
    monkeypatch.setattr(module, trains, probe)
    (tmp_path / "adapter").mkdir()
    run = SimpleNamespace(recipe=load_recipe("tiny")[0], out=tmp_path, log=print,
                          inputs={"pt_model": tmp_path, "formatted_data": tmp_path, "sft_adapter": tmp_path})
    with pytest.raises(Stop):
        getattr(module, entry)(run)
    assert seen == [True] and not trl_utils._use_triton(torch.device("cpu"))  # and only while they train
    import engine.train.pt
    assert engine.train.pt.train_pt_model.__wrapped__  # continued pre-training (TRL's SFTTrainer) too


def test_the_switch_holds_until_the_last_of_overlapping_uses_closes():
    cpu = torch.device("cpu")
    first, second = labelled_positions_only(), labelled_positions_only()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # closed out of order, as two threads may
    assert trl_utils._use_triton(cpu)
    second.__exit__(None, None, None)
    assert not trl_utils._use_triton(cpu)


@pytest.mark.parametrize("softcap, scale, temperature", [(None, 1.0, 1.0), (30.0, 0.5, 0.7)])
def test_the_cpu_log_probs_equal_trls_with_every_output_and_gradient(softcap, scale, temperature):
    """CpuLogProbs against TRL's ChunkedLogProbFunction (its torch path on a CPU), float32: the five outputs and the
    gradients of hidden states, weight and bias through both the log-probs and the entropy."""
    from trl.kernels import ChunkedLogProbFunction
    from engine.train.cpu_log_probs import CpuLogProbs
    generator = torch.Generator().manual_seed(2)
    hidden, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((37, 16), (53, 16), (53,)))
    targets = torch.randint(0, 53, (37,), generator=generator)
    results = []
    for function in (ChunkedLogProbFunction, CpuLogProbs):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        out = function.apply(*leaves, targets, temperature, 8, softcap, scale, OUTPUTS[1:])
        loss = out[0].sum() + 0.3 * out[1].sum()
        results.append((out, torch.autograd.grad(loss, leaves)))
    (theirs, their_grads), (mine, my_grads) = results
    names = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # the function's order
    for name, a, b in zip(names, theirs, mine, strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name
    for a, b in zip(their_grads, my_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
