"""base_model: the tiny preset built from a seed, or a local Hugging Face checkpoint."""

from assets.stage_asset import stage_asset
from engine.models.checkpoint import is_gguf
from engine.store.content import checkpoint_identity
from engine.models.base import make_base_model
from engine.models.device import Precision, infer_dtype
from engine.models.load import check_local_model, is_tiny, load_causal_lm, load_tokenizer, model_dir, smoke_generate
from engine.stage import Stage


def reads(recipe):
    """The tiny preset reads its shape and, for its tokenizer, the cleaned rows; a checkpoint is its files and the
    eos policy; a GGUF file also the dtype it is dequantized to."""
    if is_tiny(recipe.model):
        return ("clean_data",), ("model.model_name_or_path", "model.tiny")
    if is_gguf(check_local_model(recipe.model.model_name_or_path)):
        return (), ("model.model_name_or_path", "model.eos_source", "model.infer_dtype")
    return (), ("model.model_name_or_path", "model.eos_source")


def outside(recipe, hasher) -> dict:
    if is_tiny(recipe.model):
        return {}
    return {"checkpoint": checkpoint_identity(check_local_model(recipe.model.model_name_or_path), hasher)}


STAGE = Stage("base_model", entry=make_base_model, parents=("clean_data",), keys=("model",), outside=outside,
              select=reads)


def loads_and_generates(artifact, recipe) -> tuple[bool, str]:
    try:
        directory = model_dir(artifact.path)
        model = load_causal_lm(directory, infer_dtype(Precision.of(recipe.model)))  # as evaluation will load it
        return True, f"greedy answer {smoke_generate(model, load_tokenizer(directory))!r}"
    except Exception as exc:  # reported as a failed check, which blocks every downstream stage
        return False, f"{type(exc).__name__}: {exc}"


base_model = stage_asset(
    STAGE, group="training", description="The model every stage starts from: weights, tokenizer and chat template.",
    summary=lambda a, r: f"{r.model.model_name_or_path}: {a.metrics.get('parameters', 'local')} parameters",
    metadata=lambda a, r: {"model_dir": str(model_dir(a.path)), "parameters": a.metrics.get("parameters", 0)},
    checks={"loads_and_generates": loads_and_generates})
