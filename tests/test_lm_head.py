"""TRL's fused LM head under engine/train/lm_head.py: on a CPU it projects only the labelled positions (as it does
on CUDA), and every output and gradient is what it was when it projected them all. Training processes run under
it (engine/train/child.py)."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from engine.recipe import load_recipe
from engine.train.child import run_spec, spec_of, write_spec
from engine.train.lm_head import labelled_positions_only

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what TRL's DPOTrainer asks its head for


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


def scored(model, monkeypatch) -> tuple[list[int], dict, list[torch.Tensor]]:
    """(positions each head call projected, the head's per-token outputs, gradients of the log-probs' sum)."""
    projected = []
    function = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return function.apply(hidden, *args)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    out = model(**batch(), fused_lm_head=True, use_cache=False)
    weights = [p for p in model.parameters()]
    gradients = torch.autograd.grad(out.log_probs.sum(), weights)
    monkeypatch.undo()
    return projected, {name: getattr(out, name).detach() for name in OUTPUTS}, gradients


def test_on_a_cpu_only_the_labelled_positions_are_projected_and_nothing_else_changes(model, monkeypatch):
    every, every_out, every_grads = scored(model, monkeypatch)
    with labelled_positions_only():
        labelled, out, grads = scored(model, monkeypatch)
    labels = batch()["labels"][:, 1:]
    assert every == [2 * 15] and labelled == [int((labels != -100).sum())] == [11]
    for name in OUTPUTS:
        assert torch.allclose(out[name].float(), every_out[name].float(), atol=1e-5), name
        assert (out[name][labels == -100] == 0).all(), name  # unscored positions read as zero, as before
    for mine, theirs in zip(grads, every_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_the_switch_is_put_back(model, monkeypatch):
    decide = trl_utils._use_triton
    with pytest.raises(RuntimeError), labelled_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
        raise RuntimeError("training failed")
    assert trl_utils._use_triton is decide and not decide(torch.device("cpu"))
    assert scored(model, monkeypatch)[0] == [2 * 15]


def what_the_stage_sees(run) -> dict:
    """A stage entry point that reports how TRL's head would treat a CPU batch inside a training process."""
    return {"labelled_only": trl_utils._use_triton(torch.device("cpu"))}


def test_training_processes_run_under_it(tmp_path):
    recipe = load_recipe("tiny")[0]
    spec = write_spec(spec_of("sft_adapter", "probe", what_the_stage_sees, (), recipe, {}, tmp_path / "work",
                              tmp_path / "home"), tmp_path / "run")
    assert run_spec(spec) == {"labelled_only": True}
    assert not trl_utils._use_triton(torch.device("cpu"))  # and only there
