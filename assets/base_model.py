"""base_model: the tiny preset built from a seed, or a local Hugging Face checkpoint."""

from assets.stage_asset import stage_asset
from engine.graph import BASE_MODEL
from engine.models.load import model_dir
from engine.models.sample import judge_sample


def loads_and_generates(artifact, recipe) -> tuple[bool, str]:
    """Every weight of the checkpoint loaded (none left to random initialization) and a non-empty greedy answer,
    both measured when the stage was built. A base model is not held to stop on eos: the tiny preset is random
    weights and a pretrained base model is not trained to end a chat turn; the detail says whether it did."""
    m = artifact.metrics
    passed, detail = judge_sample(m["sample"], stop_required=False)
    if m["weights_not_loaded"]:
        missing = m["weights_not_loaded"]
        return False, (f"{len(missing)} weight(s) of the checkpoint did not load (left at random initialization): "
                       f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; {detail}")
    return passed, detail


base_model = stage_asset(
    BASE_MODEL, group="model", description="The model every stage starts from: weights, tokenizer and chat template.",
    summary=lambda a, r: f"{r.model.model_name_or_path}: {a.metrics.get('parameters', 'local')} parameters",
    metadata=lambda a, r: {"model_dir": str(model_dir(a.path)), "parameters": a.metrics.get("parameters", 0),
                           "sample": a.metrics["sample"]},
    checks={"loads_and_generates": loads_and_generates})
