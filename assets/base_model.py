"""base_model: the tiny preset built from a seed, or a local Hugging Face checkpoint."""

from assets.stage_asset import stage_asset
from engine.graph import BASE_MODEL
from engine.models.device import Precision, infer_dtype
from engine.models.load import load_causal_lm, load_tokenizer, model_dir, smoke_generate


def loads_and_generates(artifact, recipe) -> tuple[bool, str]:
    try:
        directory = model_dir(artifact.path)
        model = load_causal_lm(directory, infer_dtype(Precision.of(recipe.model)))  # as evaluation will load it
        return True, f"greedy answer {smoke_generate(model, load_tokenizer(directory))!r}"
    except Exception as exc:  # reported as a failed check, which blocks every downstream stage
        return False, f"{type(exc).__name__}: {exc}"


base_model = stage_asset(
    BASE_MODEL, group="training", description="The model every stage starts from: weights, tokenizer and chat template.",
    summary=lambda a, r: f"{r.model.model_name_or_path}: {a.metrics.get('parameters', 'local')} parameters",
    metadata=lambda a, r: {"model_dir": str(model_dir(a.path)), "parameters": a.metrics.get("parameters", 0)},
    checks={"loads_and_generates": loads_and_generates})
