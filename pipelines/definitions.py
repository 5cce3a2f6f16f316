"""The tuneline code location: every asset, the resource they share, the jobs (one per recipe file, with the
recipe's keys as the Launchpad's form; full_pipeline, with free-form overrides), schedule and sensor.

`dagster dev -w workspace.yaml` loads `defs`; the `tuneline` CLI builds the same thing with its own
recipe and artifact root through `resources`.
"""

from __future__ import annotations

import dagster as dg

from assets.base_model import base_model
from assets.clean_data import clean_data
from assets.deployment import deployment
from assets.dpo_adapter import dpo_adapter
from assets.evaluation import EVAL_ASSETS, model_comparison
from assets.formatted_data import formatted_data
from assets.grpo_adapter import grpo_adapter
from assets.merged_model import merged_model
from assets.ppo_adapter import ppo_adapter
from assets.pt_model import pt_model
from assets.quantized_models import awq_model, gptq_model
from assets.raw_data import raw_data
from assets.resource import Tuneline, check_schedule
from assets.reward_model import reward_model
from assets.sft_adapter import sft_adapter
from engine.recipe import load_recipe
from pipelines.automation import incoming_data_sensor, retrain_schedule
from pipelines.launchpad import recipe_jobs
from assets.run_tags import tag_failure

# one asset per stage of engine/graph.py, in its order (tests/test_definitions.py holds them to it)
ASSETS = [raw_data, clean_data, base_model, formatted_data, pt_model, sft_adapter, reward_model, dpo_adapter,
          ppo_adapter, grpo_adapter, merged_model, gptq_model, awq_model, *EVAL_ASSETS, model_comparison, deployment]

full_pipeline = dg.define_asset_job("full_pipeline", selection=dg.AssetSelection.all(), hooks={tag_failure},
                                    description="Materialize every stage: data, training, exports, evaluation and "
                                                "the gated deployment, with the code location's recipe "
                                                "(TUNELINE_RECIPE) and free-form overrides; the schedule and the "
                                                "sensor start it.")


def resources(recipe: str | None = None, artifact_root: str | None = None, overrides: dict | None = None) -> dict:
    """What is not given defaults from TUNELINE_RECIPE and TUNELINE_HOME (see assets/resource.py)."""
    given = {k: v for k, v in (("recipe_name", recipe), ("artifact_root", artifact_root)) if v is not None}
    return {"tuneline": Tuneline(**given, overrides=overrides or {})}


def build_definitions(recipe: str | None = None, artifact_root: str | None = None) -> dg.Definitions:
    bound = resources(recipe, artifact_root)
    loaded, _ = load_recipe(bound["tuneline"].recipe_name)  # the schedule and sensor read it; a run checks it all
    check_schedule(loaded)
    # stages run one after another in one process: they share 2 CPU cores (or one GPU) and one DuckDB catalog
    jobs = [full_pipeline, *recipe_jobs(bound["tuneline"].recipe_name, bound["tuneline"].artifact_root,
                                        {"tuneline/command": "launchpad"}, {tag_failure})]
    return dg.Definitions(assets=ASSETS, jobs=jobs, resources=bound,
                          schedules=[retrain_schedule(full_pipeline, loaded, bound["tuneline"].recipe_name)],
                          sensors=[incoming_data_sensor(full_pipeline, loaded)], executor=dg.in_process_executor)


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev -w workspace.yaml` loads, built when it loads it: importing this module (as `tuneline run`
    does for ASSETS) loads no recipe."""
    return build_definitions()
