"""The tuneline code location: every asset, the resources they share, and the job that runs them all.

`dagster dev -w workspace.yaml` loads `defs`; the `tuneline` CLI builds the same thing with its own
recipe and artifact root through `build_definitions`.
"""

from __future__ import annotations

import os

import dagster as dg

from assets.base_model import base_model
from assets.clean_data import clean_data
from assets.dpo_adapter import dpo_adapter
from assets.formatted_data import formatted_data
from assets.merged_model import merged_model
from assets.quantized_models import awq_model, gptq_model
from assets.raw_data import raw_data
from assets.reward_model import reward_model
from assets.sft_adapter import sft_adapter
from pipelines.resources import ArtifactIOManager, Tuneline

ASSETS = [base_model, raw_data, clean_data, formatted_data, sft_adapter, reward_model, dpo_adapter, merged_model,
          gptq_model, awq_model]

full_pipeline = dg.define_asset_job("full_pipeline", selection=dg.AssetSelection.all(),
                                    description="Materialize every stage, data to quantized exports.")


def resources(recipe: str, artifact_root: str, overrides_json: str = "{}") -> dict:
    return {"tuneline": Tuneline(recipe_name=recipe, artifact_root=artifact_root, overrides_json=overrides_json),
            "io_manager": ArtifactIOManager(artifact_root=artifact_root)}


def build_definitions(recipe: str = "tiny", artifact_root: str = ".tuneline") -> dg.Definitions:
    # stages run one after another in one process: they share 2 CPU cores (or one GPU) and one DuckDB catalog
    return dg.Definitions(assets=ASSETS, jobs=[full_pipeline], resources=resources(recipe, artifact_root),
                          executor=dg.in_process_executor)


defs = build_definitions(os.environ.get("TUNELINE_RECIPE", "tiny"),
                         os.environ.get("TUNELINE_HOME", os.path.abspath(".tuneline")))
