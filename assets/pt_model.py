"""pt_model: continued pre-training on raw text (LLaMA-Factory's stage pt), the model SFT, reward and DPO
start from. While the recipe's pt.dataset is empty it is the base model itself, and says so."""

from assets.training import LAUNCHER, processes
from assets.stage_asset import perplexity, stage_asset, tracking_metadata
from engine.store.content import checkpoint_identity, source_identity
from engine.models.device import PRECISION_KEYS, precision_identity
from engine.models.load import check_adapter
from engine.stage import Stage
from engine.train.pt import train_pt_model, pt_sources

PT_KEYS = ("pt", "data.cutoff_len", "data.val_size", "data.seed", *PRECISION_KEYS)


def reads(recipe):
    """Off, it reads nothing but the (empty) list; on, its section, the split keys and its corpus."""
    return ("base_model",), (PT_KEYS if recipe.pt.dataset else ("pt.dataset",))


def outside(recipe, hasher) -> dict:
    """Its corpus and the adapters merged into the base (by content); on, also the device and dtypes it trains in
    and how many processes (off, it loads no model)."""
    identity = {"corpus": source_identity(pt_sources(recipe), hasher)}
    if recipe.model.adapters():
        identity["adapters"] = [checkpoint_identity(check_adapter(a), hasher) for a in recipe.model.adapters()]
    if not recipe.pt.dataset:
        return identity
    return {**identity, "precision": precision_identity(recipe.model), **processes(recipe)}


STAGE = Stage("pt_model", entry=train_pt_model, parents=("base_model",), keys=PT_KEYS, select=reads,
              locate=("data.dataset_dir", "data.dataset_info", "data.allowed_roots", "model.adapter_name_or_path",
                      *LAUNCHER), outside=outside,
              tables={"quarantine": "quarantine.parquet"}, training=True, trains=lambda recipe: bool(recipe.pt.dataset))


def summary(artifact, recipe) -> str:
    m = artifact.metrics
    if not m["continued_pretraining"]:
        if m.get("adapters_merged"):
            return f"off (pt.dataset is empty): the base model with {len(m['adapters_merged'])} adapter(s) merged in"
        return "off (pt.dataset is empty): the base model, unchanged"
    return f"held-out loss {m['eval_loss_before']} -> {m['eval_loss_after']} on {m['train_texts']} texts"


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    if not m["continued_pretraining"]:
        return {"continued_pretraining": False, "adapters_merged": m.get("adapters_merged", [])}
    return {"continued_pretraining": True,
            **{k: m[k] for k in ("eval_loss_before", "eval_loss_after", "train_texts", "eval_texts", "quarantined",
                                 "steps", "device", "dtype")}, "eval_perplexity": perplexity(m["eval_loss_after"]),
            **tracking_metadata(artifact, recipe.pt.report_to)}


def eval_loss_below_base(artifact, recipe) -> tuple[bool, str]:
    m = artifact.metrics
    if not m["continued_pretraining"]:
        return True, "no continued pre-training: nothing to compare"
    return m["eval_loss_after"] < m["eval_loss_before"], f"held-out loss {m['eval_loss_after']} vs base {m['eval_loss_before']}"


pt_model = stage_asset(STAGE, group="training", summary=summary, metadata=metadata,
                       description="The base model after continued pre-training on pt.dataset, or the base model "
                                   "unchanged when pt is off.",
                       checks={"eval_loss_below_base": eval_loss_below_base})
