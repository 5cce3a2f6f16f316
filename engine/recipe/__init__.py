"""Recipes: one YAML file describes a whole run. Typed with pydantic, validated at load, every key described.

Keys follow LLaMA-Factory's names where one exists (model_name_or_path, template, cutoff_len, lora_rank, lora_alpha,
lora_target, learning_rate, num_train_epochs, per_device_train_batch_size, pref_beta, pref_loss,
export_quantization_bit), so its users feel at home; a default that differs from LLaMA-Factory's says so in its
description. One module per topic (as axolotl's utils/schemas):

    fields.py      the number types, the base Section, check thresholds and operational keys, fingerprint_value
    model.py       model (and the tiny preset)        data.py        data
    clean.py       clean and its steps                training.py    the shared training keys; pt, sft, reward, dpo
    grpo.py        grpo and its rewards
    export.py      merge, quantize                    evaluation.py  evaluation
    serve.py       serve                              launcher.py    launcher (and its kubernetes pods)
    schedule.py    schedule                           retention.py   retention
    recipe.py      Recipe: every section, stages, the checks across sections
    renamed.py     the table of renamed keys, applied before validation with a FutureWarning
    loader.py      YAML reading, --set overrides, load_recipe, one-line errors (describe)
    reference.py   `python -m engine.recipe.reference`: docs/recipe-keys.md and docs/recipe.schema.json

Import from here: `from engine.recipe import Recipe, load_recipe`.
"""

from engine.recipe.clean import (DEFAULT_CLEAN_STEPS, BlocklistStep, CleanSection, CleanStep, ExactDedupStep,
                                 LengthStep, NearDedupStep, NormalizeStep, PiiStep, RepetitionStep, StripHtmlStep,
                                 llamafactory_clean_section)
from engine.recipe.data import DataSection
from engine.recipe.evaluation import EvaluationSection
from engine.recipe.export import MergeSection, QuantizeSection
from engine.recipe.grpo import GrpoReward, GrpoSection
from engine.recipe.fields import (Float, Int, Section, check_threshold, fingerprint_value, get_dotted,
                                  is_fingerprinted, is_threshold, operational)
from engine.recipe.launcher import AcceleratorSection, KubernetesSection, LauncherSection
from engine.recipe.loader import (RECIPE_DIR, DuplicateKeyError, UniqueKeyLoader, describe, load_recipe, read_yaml,
                                  resolve_recipe_path, section_at, set_dotted)
from engine.recipe.model import ModelSection, TinyModel
from engine.recipe.recipe import Recipe
from engine.recipe.renamed import RENAMED, Renamed
from engine.recipe.retention import RetentionSection
from engine.recipe.schedule import ScheduleSection
from engine.recipe.serve import ServeSection
from engine.recipe.training import DpoSection, PtSection, RewardSection, SftSection, StageName, TrainSection

__all__ = [
    "AcceleratorSection", "BlocklistStep", "CleanSection", "CleanStep", "DEFAULT_CLEAN_STEPS", "DataSection", "DpoSection",
    "DuplicateKeyError", "EvaluationSection", "ExactDedupStep", "GrpoReward", "GrpoSection", "Float", "Int", "KubernetesSection", "LauncherSection",
    "LengthStep", "MergeSection", "ModelSection", "NearDedupStep", "NormalizeStep", "PiiStep", "PtSection",
    "QuantizeSection", "RECIPE_DIR", "RENAMED", "Recipe", "Renamed", "RepetitionStep", "RetentionSection",
    "RewardSection", "ScheduleSection", "Section", "ServeSection", "SftSection", "StageName", "StripHtmlStep",
    "TinyModel", "TrainSection", "UniqueKeyLoader", "check_threshold", "describe", "fingerprint_value", "get_dotted",
    "is_fingerprinted", "is_threshold", "llamafactory_clean_section", "load_recipe", "operational", "read_yaml",
    "resolve_recipe_path", "section_at", "set_dotted",
]
