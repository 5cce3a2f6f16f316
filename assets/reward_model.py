"""reward_model: a sequence-classification reward model trained with TRL's RewardTrainer."""

import dagster as dg

import engine.evaluate
import engine.models
import engine.train.common
import engine.train.reward
from assets.common import TRAINING_RETRY, blocking_checks, emit, loss_table, tracking_metadata
from engine.artifacts import Artifact, code_version
from engine.models import model_dir
from engine.train.reward import train_reward
from pipelines.resources import Tuneline

CODE = code_version(engine.train.reward, engine.train.common, engine.models, engine.evaluate)


@dg.asset(group_name="training", code_version=CODE, pool="training", retry_policy=TRAINING_RETRY,
          check_specs=blocking_checks("reward_model", "accuracy_above_chance"))
def reward_model(tuneline: Tuneline, pt_model: Artifact, formatted_data: Artifact):
    """Scores a conversation; judged by pairwise accuracy on held-out preference pairs."""
    recipe = tuneline.recipe()
    config = {"reward": recipe.reward.model_dump(), "cutoff_len": recipe.data.cutoff_len}
    artifact = tuneline.build("reward_model", [pt_model, formatted_data], config, CODE, lambda out: train_reward(
        model_dir(pt_model.path), formatted_data.path, recipe.reward, recipe.data.cutoff_len, out))
    m, bound = artifact.metrics, recipe.reward.min_accuracy
    yield from emit(tuneline, artifact, f"held-out pairwise accuracy {m['eval_accuracy']:.2f}",
                    {"eval_accuracy": m["eval_accuracy"], "eval_accuracy_before": m["eval_accuracy_before"],
                     "eval_pairs": m["eval_pairs"], "loss_curve": loss_table(m["loss_curve"]),
                     **tracking_metadata(artifact, recipe.reward.report_to)},
                    {"accuracy_above_chance": (m["eval_accuracy"] > bound,
                                               f"accuracy {m['eval_accuracy']:.3f} on {m['eval_pairs']} pairs, "
                                               f"needs > {bound}")})
