"""pt_model: continued pre-training on raw text (LLaMA-Factory's stage pt), the model SFT, reward and DPO
start from. While the recipe's pt.dataset is empty it is the base model itself, and says so."""

import dagster as dg

import engine.data.ingest
import engine.models
import engine.train.common
import engine.train.pt
from assets.base_model import point_at_local_model
from assets.common import TRAINING_RETRY, blocking_checks, emit, loss_table, tracking_metadata
from engine.artifacts import Artifact, code_version
from engine.data.registry import resolve_sources
from engine.models import model_dir
from engine.tables import QUARANTINE_COLUMNS, write_rows
from engine.train.pt import train_pt
from pipelines.resources import Tuneline

CODE = code_version(engine.train.pt, engine.train.common, engine.models, engine.data.ingest)


def pretrain_to(out, base: Artifact, recipe) -> dict:
    sources = resolve_sources(recipe.data.dataset_dir, recipe.data.dataset_info, recipe.pt.dataset,
                              recipe.data.allowed_roots)
    metrics, quarantine = train_pt(model_dir(base.path), sources, recipe.pt, recipe.data.cutoff_len,
                                   recipe.data.val_size, recipe.data.seed, out)
    write_rows(quarantine, out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return metrics


@dg.asset(group_name="training", code_version=CODE, pool="training", retry_policy=TRAINING_RETRY,
          check_specs=blocking_checks("pt_model", "eval_loss_below_base"))
def pt_model(tuneline: Tuneline, base_model: Artifact):
    """The base model after continued pre-training on pt.dataset, or the base model unchanged when pt is off."""
    recipe = tuneline.recipe()
    if not recipe.pt.dataset:
        artifact = tuneline.build("pt_model", [base_model], {"pt": "off"}, CODE,
                                  lambda out: point_at_local_model(out, {"path": str(model_dir(base_model.path))}))
        yield from emit(tuneline, artifact, "off (pt.dataset is empty): the base model, unchanged",
                        {"continued_pretraining": False},
                        {"eval_loss_below_base": (True, "no continued pre-training: nothing to compare")})
        return
    config = {"pt": recipe.pt.model_dump(), "data": recipe.data.model_dump(
        include={"dataset_dir", "dataset_info", "cutoff_len", "val_size", "seed"})}
    artifact = tuneline.build("pt_model", [base_model], config, CODE, lambda out: pretrain_to(out, base_model, recipe))
    if not artifact.cache_hit:
        tuneline.catalog().replace_rows("quarantine", artifact.fingerprint, artifact.path / "quarantine.parquet")
    m = artifact.metrics
    yield from emit(tuneline, artifact, f"held-out loss {m['eval_loss_before']} -> {m['eval_loss_after']} on "
                    f"{m['train_texts']} texts", {"continued_pretraining": True, **{k: m[k] for k in (
                        "eval_loss_before", "eval_loss_after", "train_texts", "eval_texts", "quarantined", "steps")},
                        "loss_curve": loss_table(m["loss_curve"]),
                        **tracking_metadata(artifact, recipe.pt.report_to)},
                    {"eval_loss_below_base": (m["eval_loss_after"] < m["eval_loss_before"],
                                              f"held-out loss {m['eval_loss_after']} vs base {m['eval_loss_before']}")})
