"""base_model: the tiny preset built from a seed, or a local Hugging Face checkpoint."""

import json

import dagster as dg

import engine.data.ingest
import engine.models
from assets.common import blocking_checks, emit
from engine.artifacts import code_version
from engine.data.ingest import ingest, message_texts, source_identity
from engine.data.registry import recipe_sources
from engine.models import build_tiny, is_tiny, load_causal_lm, load_tokenizer, local_model_identity, model_dir, smoke_generate
from pipelines.resources import Tuneline

CODE = code_version(engine.models, engine.data.ingest)


def point_at_local_model(out, identity: dict) -> dict:
    """A local checkpoint is not copied: the artifact names it, and its identity is in the fingerprint."""
    (out / "local_model.json").write_text(json.dumps(identity))
    return identity


@dg.asset(group_name="training", code_version=CODE, check_specs=blocking_checks("base_model", "loads_and_generates"))
def base_model(tuneline: Tuneline):
    """The model every stage starts from: weights, tokenizer and chat template."""
    recipe = tuneline.recipe()
    if is_tiny(recipe.model):
        sources = recipe_sources(recipe.data)
        config = {"tiny": recipe.model.tiny.model_dump(), "tokenizer_data": source_identity(sources)}
        work = lambda out: build_tiny(recipe.model.tiny, message_texts(ingest(sources)[0]), out)
    else:
        identity = local_model_identity(engine.models.check_local_model(recipe.model.model_name_or_path))
        config = {"local": identity}
        work = lambda out: point_at_local_model(out, identity)
    artifact = tuneline.build("base_model", [], config, CODE, work)
    try:
        answer = smoke_generate(load_causal_lm(model_dir(artifact.path)), load_tokenizer(model_dir(artifact.path)))
        check = (True, f"greedy answer {answer!r}")
    except Exception as exc:  # reported as a failed check, which blocks every downstream stage
        answer, check = None, (False, f"{type(exc).__name__}: {exc}")
    yield from emit(tuneline, artifact, f"{recipe.model.model_name_or_path}: generates {answer!r}",
                    {"model_dir": str(model_dir(artifact.path)), "parameters": artifact.metrics.get("parameters", 0)},
                    {"loads_and_generates": check})
