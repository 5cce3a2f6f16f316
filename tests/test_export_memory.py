"""One model-sized copy alive at a time in merge, quantization and evaluation (issue 25 item 4): what lets a
70B-class model through the export path on a box that holds its weights once.

Measured, not mocked: every time any model finishes loading (PreTrainedModel.from_pretrained returns), the bytes of
every live module's parameters and buffers are summed over the objects the garbage collector tracks (one count per
storage, so tied weights count once), without collecting first: a copy that the stage forgot to drop, or that only a
reference cycle still holds, counts. A model is largest right after another one loaded beside it, so the peak over
those moments is the stage's peak of live model weights."""

import contextlib
import gc
import itertools

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from engine.evaluate.compare import measure_model
from engine.export.merge import merge
from engine.export.quantize import quantize
from engine.models.load import load_causal_lm
from engine.recipe import EvaluationSection, load_recipe

# one copy plus what a stage adds to it (a LoRA adapter, quantization scales): well under a second copy
ONE_COPY = 1.1


def live_model_bytes() -> int:
    """Bytes of every live module's parameters and buffers (meta tensors hold none), each storage once."""
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.nn.Module):  # type(): isinstance would touch deprecated proxies
            for tensor in itertools.chain(obj._parameters.values(), obj._buffers.values()):
                if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                    storage = tensor.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@contextlib.contextmanager
def peak_after_each_load(monkeypatch):
    """{"peak": the most live model bytes above those alive on entry, seen as each model load returned, "loads": how
    many loads}."""
    original = PreTrainedModel.from_pretrained.__func__
    seen = {"peak": 0, "loads": 0}
    gc.collect()  # what earlier tests left for the collector is not this stage's
    before = live_model_bytes()

    def measured(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        seen["loads"] += 1
        seen["peak"] = max(seen["peak"], live_model_bytes() - before)
        return model
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(measured))
    yield seen


@pytest.fixture(scope="module")
def one_copy(tiny_model_dir):
    """The bytes of one tiny model in the inference dtype on this machine."""
    model = load_causal_lm(tiny_model_dir)
    size = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for p in itertools.chain(model.parameters(), model.buffers())}.values())
    del model
    gc.collect()
    return size


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model, its weights non-zero so that the merge changes the model."""
    from peft import LoraConfig, get_peft_model
    out = tmp_path_factory.mktemp("adapter")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(load_causal_lm(tiny_model_dir), lora).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, adapter, formatted_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    merge(tiny_model_dir, [adapter], formatted_dir, out)
    return out


def test_the_merge_frees_the_trained_model_before_reloading_the_merged_one(tiny_model_dir, adapter, formatted_dir,
                                                                           one_copy, tmp_path, monkeypatch):
    with peak_after_each_load(monkeypatch) as seen:
        metrics = merge(tiny_model_dir, [adapter], formatted_dir, tmp_path)
    assert seen["loads"] == 2  # the trained model, then the merged one reloaded for the check
    assert seen["peak"] <= ONE_COPY * one_copy, f"{seen['peak'] / one_copy:.2f} copies alive"
    assert metrics["max_logit_diff"] < 1e-3  # the check still compares the two


def test_quantization_frees_the_calibrated_model_before_loading_either_measured_one(merged_dir, formatted_dir,
                                                                                   one_copy, tmp_path, monkeypatch):
    recipe, _ = load_recipe("tiny")
    with peak_after_each_load(monkeypatch) as seen:
        metrics = quantize(merged_dir, formatted_dir, "gptq", recipe.quantize, recipe.data.cutoff_len, tmp_path)
    assert seen["loads"] == 3  # calibrated, then the quantized export, then the merged reference
    assert seen["peak"] <= ONE_COPY * one_copy, f"{seen['peak'] / one_copy:.2f} copies alive"
    assert metrics["reloaded_quant_method"] == "compressed-tensors" and metrics["merged_eval_perplexity"] > 0


def test_evaluation_frees_the_policy_before_loading_the_reward_model(tiny_model_dir, adapter, formatted_dir,
                                                                     one_copy, tmp_path, monkeypatch):
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(tmp_path)
    gc.collect()
    cfg = EvaluationSection(max_samples=4, max_new_tokens=4, infer_backend="huggingface")
    with peak_after_each_load(monkeypatch) as seen:
        metrics = measure_model(tiny_model_dir, [adapter], formatted_dir, tmp_path, cfg)
    assert seen["loads"] == 2  # the policy (base + adapter), then the reward model
    assert seen["peak"] <= ONE_COPY * one_copy, f"{seen['peak'] / one_copy:.2f} copies alive"
    assert metrics["reward_score"] is not None and metrics["perplexity"] > 0
