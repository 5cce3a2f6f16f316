"""LLaMA-Factory's training menu on the tiny model: each option trains for a few steps and is checked for
what makes it itself (which weights moved, what was saved, what the tracker recorded)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from engine.data.registry import resolve_sources
from engine.errors import DataError, RecipeError
from engine.models.load import load_with_adapters
from engine.recipe import DpoSection, PtSection, SftSection, load_recipe
from engine.models.load import trained_weights
from engine.train.adapters import check_quantized_training, prepare_model
from engine.train.arguments import optimizers
from engine.train.tracking import mlflow_uri
from engine.train.dpo import train_dpo
from engine.train.pt import train_pt
from engine.train.sft import train_sft
from engine.models.load import load_causal_lm

pytestmark = pytest.mark.slow
FAST = {"max_steps": 4, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "logging_steps": 1}


def sft(tiny_model_dir, formatted_dir, tmp_path, **options):
    out = tmp_path / "sft"
    out.mkdir()
    return out, train_sft(tiny_model_dir, formatted_dir, SftSection(**{**FAST, **options}), 128, out)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_dora_trains_a_dora_adapter(tiny_model_dir, formatted_dir, tmp_path):
    out, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, finetuning_type="dora")
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_full_finetuning_trains_and_saves_every_weight(tiny_model_dir, formatted_dir, tmp_path):
    out, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, finetuning_type="full")
    assert metrics["trainable_parameters"] == metrics["total_parameters"]
    assert trained_weights(out) == out / "model"
    base, tuned = weights(tiny_model_dir), weights(out / "model")
    assert all(not torch.equal(base[k], tuned[k]) for k in base if "layers.0.self_attn.q_proj.weight" in k)
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_freeze_trains_only_the_last_layers(tiny_model_dir, formatted_dir, tmp_path):
    out, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, finetuning_type="freeze", freeze_trainable_layers=1)
    base, tuned = weights(tiny_model_dir), weights(out / "model")
    assert all(torch.equal(base[k], tuned[k]) for k in base if ".layers.0." in k or "embed_tokens" in k)
    assert any(not torch.equal(base[k], tuned[k]) for k in base if ".layers.1." in k)
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]


def test_freeze_layers_are_counted_from_the_front_when_negative(tiny_model_dir):
    model = prepare_model(load_causal_lm(tiny_model_dir), SftSection(finetuning_type="freeze",
                                                                     freeze_trainable_layers=-1), "CAUSAL_LM")
    trainable = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters()
                 if p.requires_grad and ".layers." in n}
    assert trainable == {"0"}


def test_loraplus_gives_b_matrices_a_larger_learning_rate(tiny_model_dir):
    cfg = SftSection(loraplus_lr_ratio=16, learning_rate=1e-3)
    model = prepare_model(load_causal_lm(tiny_model_dir), cfg, "CAUSAL_LM")
    optimizer, _ = optimizers(model, cfg)
    rates = {group["lr"] for group in optimizer.param_groups if group["params"]}
    assert rates == {1e-3, 16e-3}
    assert optimizers(model, SftSection()) == (None, None)


def test_packing_fills_sequences_with_several_rows(tiny_model_dir, formatted_dir, tmp_path):
    _, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, packing=True)
    assert metrics["train_sequences"] < metrics["train_rows"] / 1.5
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_tensorboard_receives_the_training_loss(tiny_model_dir, formatted_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, report_to="tensorboard")
    (run,) = {p.parent for p in (out / "tensorboard").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(run)).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == FAST["max_steps"]
    assert losses == pytest.approx([p["loss"] for p in metrics["loss_curve"]], abs=1e-3)


def test_mlflow_records_the_run_in_a_local_store(tiny_model_dir, formatted_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path / "..")
    elsewhere = sorted(p.name for p in (tmp_path / "..").iterdir())
    out, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, report_to="mlflow")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set for the run only
    assert sorted(p.name for p in (tmp_path / "..").iterdir()) == elsewhere  # no stray mlflow.db or mlruns/
    client = MlflowClient(tracking_uri=mlflow_uri(out))
    (run,) = client.search_runs([client.get_experiment_by_name("tuneline").experiment_id])
    assert run.info.run_name == "sft"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [round(m.value, 4) for m in history] == pytest.approx([p["loss"] for p in metrics["loss_curve"]], abs=1e-3)


def test_wandb_runs_offline_into_the_artifact_and_logs_the_loss(tiny_model_dir, formatted_dir, tmp_path,
                                                                 monkeypatch):
    """No key, no network: the W&B run is written offline inside the artifact (out/wandb), with the training loss
    of every step; wandb's own reader reads it back (what `wandb sync` would upload)."""
    from tests.wandb_files import history
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # any attempt to reach the network would fail
    out, metrics = sft(tiny_model_dir, formatted_dir, tmp_path, report_to="wandb")
    assert "WANDB_MODE" not in os.environ  # set for the run only
    (run,) = (out / "wandb").glob("offline-run-*")
    (log,) = run.glob("run-*.wandb")
    losses = [row["train/loss"] for row in history(log) if "train/loss" in row]
    assert losses == pytest.approx([p["loss"] for p in metrics["loss_curve"]], abs=1e-3)
    assert metrics["report_to"] == "wandb"


def test_qlora_without_a_gpu_is_refused_before_any_work():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: QLoRA may run")
    with pytest.raises(RecipeError, match="sft.quantization_bit 4 \\(QLoRA\\) needs bitsandbytes and a CUDA GPU"):
        check_quantized_training(SftSection(quantization_bit=4), "sft")
    with pytest.raises(RecipeError, match="QLoRA"):
        from assets.resource import validated_recipe
        validated_recipe("tiny", json.dumps({"sft.quantization_bit": 4}))


def test_qlora_needs_an_adapter():
    with pytest.raises(RecipeError, match="needs finetuning_type lora or dora, not full"):
        load_recipe("tiny", {"sft.quantization_bit": 4, "sft.finetuning_type": "full"})


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, formatted_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_for_dpo")  # trained enough that chosen answers are already likelier
    train_sft(tiny_model_dir, formatted_dir, SftSection(**{**FAST, "max_steps": 30}), 128, out)
    return out / "adapter"


@pytest.mark.parametrize("pref_loss", ["ipo", "orpo", "kto"])
def test_each_preference_loss_trains_on_top_of_sft(pref_loss, tiny_model_dir, sft_adapter,
                                                    formatted_dir, tmp_path):
    cfg = DpoSection(pref_loss=pref_loss, **FAST)
    metrics = train_dpo(tiny_model_dir, sft_adapter, formatted_dir, cfg, 128, tmp_path)
    assert metrics["pref_loss"] == pref_loss and metrics["steps"] == FAST["max_steps"]
    # the trainer counts the tokens it trains on, but ORPO's batches carry no input_ids for it to count
    assert (metrics["tokens_per_second"] is None) == (pref_loss == "orpo")
    assert pref_loss == "orpo" or metrics["tokens_per_second"] == pytest.approx(
        metrics["tokens_this_run"] / metrics["seconds_this_run"], rel=0.01)
    assert metrics["eval_reward_margin"] > 0  # chosen (or desirable) answers already gain on rejected ones
    tuned = load_with_adapters(tiny_model_dir, sft_adapter, trained_weights(tmp_path))
    reference = load_with_adapters(tiny_model_dir, sft_adapter)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), reference.state_dict().values(),
                                                      strict=True))


def test_dpo_is_reproducible_from_the_recipe_seed(tiny_model_dir, sft_adapter, formatted_dir, tmp_path):
    """The adapter DPO adds starts from the recipe's seed, whatever random numbers were drawn before it (a gate
    comparing DPO with SFT would otherwise pass or fail by chance)."""
    cfg = DpoSection(**{**FAST, "max_steps": 2})
    adapters = []
    for attempt in ("one", "two"):
        torch.rand(1000 if attempt == "one" else 7)  # different random state before each training
        train_dpo(tiny_model_dir, sft_adapter, formatted_dir, cfg, 128, tmp_path / attempt)
        adapters.append(load_file(str(tmp_path / attempt / "adapter" / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_full_dpo_keeps_the_sft_model_as_its_reference(tiny_model_dir, sft_adapter, formatted_dir,
                                                       tmp_path):
    cfg = DpoSection(finetuning_type="full", **FAST)
    metrics = train_dpo(tiny_model_dir, sft_adapter, formatted_dir, cfg, 128, tmp_path)
    assert metrics["trainable_parameters"] == metrics["total_parameters"] > 0
    assert metrics["eval_reward_margin"] > 0  # measured against the SFT reference: a base reference would be far off


def test_kto_without_labelled_data_names_what_is_missing(tiny_model_dir, sft_adapter, formatted_dir,
                                                         tmp_path):
    import shutil
    without_kto = tmp_path / "formatted"
    shutil.copytree(formatted_dir, without_kto, ignore=shutil.ignore_patterns("kto"))
    with pytest.raises(DataError, match="kto_tag"):
        train_dpo(tiny_model_dir, sft_adapter, without_kto, DpoSection(pref_loss="kto", **FAST), 128,
                  tmp_path / "out")


def test_pt_learns_the_raw_text_and_quarantines_bad_rows(tiny_model_dir, tmp_path):
    sources = resolve_sources("data", "datasets.yaml", ["pt_corpus"])
    metrics, quarantine = train_pt(tiny_model_dir, sources, PtSection(**{**FAST, "max_steps": 6}), 128, 0.1, 42,
                                   tmp_path)
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert 0 < metrics["tokens_this_run"] <= 6 * FAST["per_device_train_batch_size"] * 128  # 6 packed steps
    assert {(q["row_id"], q["reason"]) for q in quarantine} == {("pt_corpus:300", "empty"),
                                                                 ("pt_corpus:301", "wrong_type")}
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "adapter_config.json").exists()
    load_causal_lm(tmp_path)  # a full model: every later stage starts from it


def test_the_pt_stage_runs_as_an_asset_with_its_quarantine_and_tracker(tmp_path):
    import dagster as dg
    from engine.store.catalog import Catalog
    from pipelines.definitions import ASSETS, resources
    overrides = {"pt.dataset": ["pt_corpus"], "pt.max_steps": 6, "pt.learning_rate": 3e-3, "pt.report_to": "tensorboard"}
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources("tiny", str(tmp_path), overrides), instance=instance,
                                selection="*pt_model")
    assert result.success
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "pt_model"]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["continued_pretraining"] is True and meta["eval_loss_after"] < meta["eval_loss_before"]
    assert meta["steps"] == 6 and meta["tokens_per_second"] > 0
    assert meta["tracking"] == f"tensorboard --logdir {meta['path']}/tensorboard"
    assert list((tmp_path / "artifacts" / "pt_model").glob("*/tensorboard/**/events.out.tfevents.*"))
    reasons = Catalog(tmp_path / "catalog.duckdb").query(
        "SELECT row_id, reason FROM quarantine WHERE artifact = ? ORDER BY row_id", [meta["fingerprint"]])
    assert reasons == [("pt_corpus:300", "empty"), ("pt_corpus:301", "wrong_type")]
