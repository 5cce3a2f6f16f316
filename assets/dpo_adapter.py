"""dpo_adapter: preference optimisation (DPO, IPO, ORPO or KTO with TRL) on top of the SFT model."""

import dagster as dg

import engine.models
import engine.train.common
import engine.train.dpo
from assets.common import TRAINING_RETRY, blocking_checks, emit, loss_table, tracking_metadata
from engine.artifacts import Artifact, code_version
from engine.models import model_dir
from engine.train.common import trained_weights
from engine.train.dpo import train_dpo
from pipelines.resources import Tuneline

CODE = code_version(engine.train.dpo, engine.train.common, engine.models)


@dg.asset(group_name="training", code_version=CODE, pool="training", retry_policy=TRAINING_RETRY,
          check_specs=blocking_checks("dpo_adapter", "reward_margin_positive"))
def dpo_adapter(tuneline: Tuneline, pt_model: Artifact, sft_adapter: Artifact, formatted_data: Artifact):
    """Preference optimisation; the SFT model is the reference. The reward model judges it in eval_dpo."""
    recipe = tuneline.recipe()
    config = {"dpo": recipe.dpo.model_dump(), "cutoff_len": recipe.data.cutoff_len}
    parents = [pt_model, sft_adapter, formatted_data]
    artifact = tuneline.build("dpo_adapter", parents, config, CODE, lambda out: train_dpo(
        model_dir(pt_model.path), trained_weights(sft_adapter.path), formatted_data.path, recipe.dpo,
        recipe.data.cutoff_len, out))
    m = artifact.metrics
    yield from emit(tuneline, artifact, f"{m['pref_loss']}: eval reward margin {m['eval_reward_margin']}, accuracy "
                    f"{m['eval_reward_accuracy']}",
                    {"pref_loss": m["pref_loss"], "eval_reward_margin": m["eval_reward_margin"],
                     "eval_reward_accuracy": m["eval_reward_accuracy"], "loss_curve": loss_table(m["loss_curve"]),
                     **tracking_metadata(artifact, recipe.dpo.report_to)},
                    {"reward_margin_positive": (m["eval_reward_margin"] > 0,
                                                f"mean chosen-minus-rejected reward {m['eval_reward_margin']}")})
