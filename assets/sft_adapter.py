"""sft_adapter: a LoRA adapter trained with TRL's SFTTrainer, loss on assistant tokens only."""

import dagster as dg

import engine.evaluate
import engine.models
import engine.train.common
import engine.train.sft
from assets.common import TRAINING_RETRY, blocking_checks, emit, loss_table, tracking_metadata
from engine.artifacts import Artifact, code_version
from engine.models import model_dir
from engine.train.sft import train_sft
from pipelines.resources import Tuneline

CODE = code_version(engine.train.sft, engine.train.common, engine.models, engine.evaluate)


@dg.asset(group_name="training", code_version=CODE, pool="training", retry_policy=TRAINING_RETRY,
          check_specs=blocking_checks("sft_adapter", "eval_loss_below_base"))
def sft_adapter(tuneline: Tuneline, pt_model: Artifact, formatted_data: Artifact):
    """Supervised fine-tuning on the SFT view; eval loss is measured before and after."""
    recipe = tuneline.recipe()
    config = {"sft": recipe.sft.model_dump(), "cutoff_len": recipe.data.cutoff_len}
    artifact = tuneline.build("sft_adapter", [pt_model, formatted_data], config, CODE, lambda out: train_sft(
        model_dir(pt_model.path), formatted_data.path, recipe.sft, recipe.data.cutoff_len, out))
    m = artifact.metrics
    yield from emit(tuneline, artifact, f"eval loss {m['eval_loss_before']} -> {m['eval_loss_after']}",
                    {"eval_loss_before": m["eval_loss_before"], "eval_loss_after": m["eval_loss_after"],
                     "tokens_per_second": m["tokens_per_second"], "steps": m["steps"],
                     "loss_curve": loss_table(m["loss_curve"]),
                     **tracking_metadata(artifact, recipe.sft.report_to)},
                    {"eval_loss_below_base": (m["eval_loss_after"] < m["eval_loss_before"],
                                              f"eval loss {m['eval_loss_after']} vs base {m['eval_loss_before']}")})
