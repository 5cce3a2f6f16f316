"""Resources: the recipe and artifact store every asset uses, and the IO manager that passes artifacts."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import dagster as dg
from pydantic import Field

from engine.artifacts import Artifact, ArtifactStore
from engine.catalog import Catalog
from engine.data.registry import recipe_sources, resolve_sources
from engine.evaluation import check_lm_eval
from engine.models import check_local_model, is_tiny
from engine.recipe import Recipe, load_recipe, resolve_recipe_path
from engine.scorers import resolve_scorer
from engine.train.common import check_quantized_training


def validated_recipe(name_or_path: str, overrides_json: str) -> Recipe:
    """Load the recipe and check every path it names, before any work starts."""
    path = resolve_recipe_path(name_or_path)
    return _validated(str(path), overrides_json, path.read_text())


@lru_cache(maxsize=8)
def _validated(path: str, overrides_json: str, text: str) -> Recipe:  # keyed on the text: an edited recipe reloads
    recipe, _ = load_recipe(path, json.loads(overrides_json))
    recipe_sources(recipe.data)
    if recipe.pt.dataset:
        resolve_sources(recipe.data.dataset_dir, recipe.data.dataset_info, recipe.pt.dataset, recipe.data.allowed_roots)
    resolve_scorer(recipe.evaluation.scorer)
    for stage in ("sft", "reward", "dpo"):
        check_quantized_training(getattr(recipe, stage), stage)
    check_lm_eval(recipe.evaluation)
    if not is_tiny(recipe.model):
        check_local_model(recipe.model.model_name_or_path)
    return recipe


# Run config (the Launchpad) replaces a resource's bound values, so defaults come from the code location's
# environment: TUNELINE_RECIPE and TUNELINE_HOME, as `make ui` sets them.
def default_recipe() -> str:
    return os.environ.get("TUNELINE_RECIPE", "tiny")


def default_root() -> str:
    return os.environ.get("TUNELINE_HOME", os.path.abspath(".tuneline"))


class Tuneline(dg.ConfigurableResource):
    """The run's recipe (name or YAML path), recipe overrides by dotted key, and the artifact root.

    In the Launchpad: resources: {tuneline: {config: {overrides: {sft.learning_rate: 1.0e-4}}}}
    """
    recipe_name: str = Field(default_factory=default_recipe)
    overrides: dict[str, Any] = {}
    artifact_root: str = Field(default_factory=default_root)

    def recipe(self) -> Recipe:
        return validated_recipe(self.recipe_name, json.dumps(self.overrides, sort_keys=True))

    def store(self) -> ArtifactStore:
        return ArtifactStore(Path(self.artifact_root) / "artifacts", keep_last=self.recipe().retention.keep_last)

    def catalog(self) -> Catalog:
        return Catalog(Path(self.artifact_root) / "catalog.duckdb")

    def build(self, asset: str, parents: list[Artifact], config: Any, code: str,
              work: Callable[[Path], dict]) -> Artifact:
        """The artifact for these inputs: stored if its fingerprint exists, else built and catalogued."""
        store = self.store()
        artifact = store.build(asset, parents, config, code, work)
        if not artifact.cache_hit:
            self.catalog().record_artifact(store.manifest(artifact), artifact.path)
        return artifact


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Artifacts are directories already on disk: this records which one each asset produced last,
    and hands it to downstream assets (a small JSON pointer, never a pickle)."""
    artifact_root: str = Field(default_factory=default_root)

    def pointer(self, asset_key: dg.AssetKey) -> Path:
        return Path(self.artifact_root) / "pointers" / f"{asset_key.to_user_string()}.json"

    def handle_output(self, context: dg.OutputContext, obj: Artifact) -> None:
        path = self.pointer(context.asset_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"asset": obj.asset, "fingerprint": obj.fingerprint, "path": str(obj.path)}))

    def load_input(self, context: dg.InputContext) -> Artifact:
        path = self.pointer(context.asset_key)
        if not path.is_file():
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized yet "
                                    f"(no artifact pointer at {path})")
        pointer = json.loads(path.read_text())
        store = ArtifactStore(Path(self.artifact_root) / "artifacts")
        artifact = store.lookup(pointer["asset"], pointer["fingerprint"])
        if artifact is None:
            raise FileNotFoundError(f"artifact {pointer['path']} of {pointer['asset']} is gone; re-materialize it")
        return artifact
