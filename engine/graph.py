"""The stage graph: every stage of tuneline declared once, here, in graph order (parents before children).

A declaration (engine/stage.py's Stage) says what a stage reads: its parents, its recipe keys, the keys that only
locate outside content and that content's identity, what it reads under a given recipe, when it is off, its entry
point, its catalog tables, and whether it trains. Plans are computed over STAGES (engine/plan.py); the Dagster layer
makes one asset of each stage and adds only its presentation (assets/: group, description, summary, metadata,
checks).

No entry point imports this module, nor anything that imports it: a stage's code version is its entry point's
import closure (engine/store/codeversion.py), and this module in every closure would rebuild every stage whenever
one declaration changed (tests/test_import_graph.py asserts it).
"""

from __future__ import annotations

from pathlib import Path

from engine.data.clean_stage import clean_raw_data
from engine.data.format import format_clean_data
from engine.data.ingest import read_raw_data
from engine.data.registry import recipe_sources
from engine.data.sources import source_identity
from engine.evaluate.compare import EVALUATED, STAGE_MODELS, compare_stages, evaluate_stage, generation_backend
from engine.evaluate.scorers import scorer_identity
from engine.export.merge import merge_model
from engine.export.quantize import quantize_awq, quantize_gptq
from engine.models.backends import vllm_usable
from engine.models.base import make_base_model
from engine.models.checkpoint import is_gguf
from engine.models.device import PRECISION_KEYS, precision_identity, stage_device, with_precision
from engine.models.footprint import ExportWrites, TrainingWrites
from engine.models.identity import tokenizer_identity
from engine.models.load import check_adapter, check_local_model, is_tiny
from engine.serve.server import deploy
from engine.recipe import is_fingerprinted, is_threshold
from engine.recipe.ppo import PpoSection
from engine.stage import Stage
from engine.store.content import ContentHasher, checkpoint_identity
from engine.train.dpo import train_dpo_adapter
from engine.train.grpo import rollout_backend, train_grpo_adapter
from engine.train.rewards import reward_identity
from engine.train.launch import world_size
from engine.train.ppo import train_ppo_adapter
from engine.train.pt import pt_sources, train_pt_model
from engine.train.reward import train_reward_model
from engine.train.sft import train_sft_adapter

# --- data -----------------------------------------------------------------------------------------------------

# recipe keys that only say where the sources are: their content is fingerprinted instead, so moving a data
# folder rebuilds nothing while editing one row rebuilds everything downstream
DATA_LOCATION = ("data.dataset_dir", "data.dataset_info", "data.dataset", "data.allowed_roots")


def registered_sources(recipe, hasher: ContentHasher) -> dict:
    return {"sources": source_identity(recipe_sources(recipe.data), hasher)}


RAW_DATA = Stage("raw_data", entry=read_raw_data, keys=("data.max_samples",), locate=DATA_LOCATION,
                 outside=registered_sources,
                 tables={"raw_rows": "rows", "quarantine": "quarantine"})


def clean_reads(recipe):
    """The model's tokenizer is read only when the length step counts tokens: otherwise a new model re-cleans
    nothing."""
    return ("raw_data",), (("clean", "model.model_name_or_path") if recipe.clean.counts_tokens() else ("clean",))


def clean_outside(recipe, hasher) -> dict:
    if not recipe.clean.counts_tokens():
        return {}
    return {"tokenizer": tokenizer_identity(recipe.model.model_name_or_path, hasher)}


CLEAN_DATA = Stage("clean_data", entry=clean_raw_data, parents=("raw_data",), keys=("clean", "model.model_name_or_path"),
                   # operational: dedup's memory bound, the processes and the engine, never the rows: not fingerprinted
                   locate=("data.memory_gb", "data.preprocessing_num_workers", "data.engine", "data.ray_address"),
                   select=clean_reads, outside=clean_outside,
                   tables={"quarantine": "quarantine", "duplicate_clusters": "clusters",
                           "rewrites": "rewrites"})


# --- the base model -------------------------------------------------------------------------------------------

def base_model_reads(recipe):
    """The tiny preset reads its shape and, for its tokenizer, the cleaned rows; a checkpoint is its files and the
    eos policy; a GGUF file also the dtype it is dequantized to."""
    if is_tiny(recipe.model):
        return ("clean_data",), ("model.model_name_or_path", "model.tiny")
    if is_gguf(check_local_model(recipe.model.model_name_or_path)):
        return (), ("model.model_name_or_path", "model.eos_source", "model.infer_dtype")
    return (), ("model.model_name_or_path", "model.eos_source")


def base_model_outside(recipe, hasher) -> dict:
    if is_tiny(recipe.model):
        return {}
    return {"checkpoint": checkpoint_identity(check_local_model(recipe.model.model_name_or_path), hasher)}


BASE_MODEL = Stage("base_model", entry=make_base_model, parents=("clean_data",), keys=("model",),
                   outside=base_model_outside, select=base_model_reads)

FORMATTED_DATA = Stage("formatted_data", entry=format_clean_data, parents=("base_model", "clean_data"),
                       keys=("data.cutoff_len", "data.default_system", "data.overlength", "data.val_size", "data.seed",
                             "data.decontamination_threshold", "data.template"),
                       # operational: the rows are the same for any number of workers and any memory bound
                       locate=("data.preprocessing_num_workers", "data.memory_gb"),
                       tables={"split_rows": "splits", "quarantine": "quarantine"})


# --- training -------------------------------------------------------------------------------------------------

# the launcher section says how processes start; only their number changes what is learned (the global batch).
# launcher.deepspeed/fsdp are not fingerprinted: sharding splits the same steps over the same ranks (equal in exact
# arithmetic, as DDP against one process is)
LAUNCHER = ("launcher",)


def processes(recipe) -> dict:
    return {"processes": world_size(recipe.launcher)}


# the training stages a recipe's `stages` turns off, by the asset each makes
SWITCHED = {"sft_adapter": "sft", "reward_model": "rm", "dpo_adapter": "dpo", "ppo_adapter": "ppo",
            "grpo_adapter": "grpo"}


def parents_run(parents: tuple[str, ...], recipe) -> tuple[str, ...]:
    """`parents` without the training stages the recipe does not run: without sft a stage starts from pt_model (the
    base model, with model.adapter_name_or_path merged in), without rm nothing scores, without dpo nothing is
    merged on top."""
    return tuple(p for p in parents if p not in SWITCHED or recipe.runs(SWITCHED[p]))


def switchable_training_stage(name: str, entry, parents: tuple[str, ...], keys: tuple[str, ...], switch: str,
                              off_reason: str, writes: TrainingWrites, select=None, outside=None) -> Stage:
    """A training stage the recipe's `stages` list turns on or off (sft, rm, dpo): off, it reads only that list,
    since its own section cannot change what it records. On, it starts from the SFT model only where sft runs."""
    return Stage(name, entry=entry, parents=parents, keys=keys, locate=LAUNCHER, training=True, writes=writes,
                 select=lambda recipe: ((select or parents_run)(parents, recipe), keys) if recipe.runs(switch)
                 else ((), ("stages",)),
                 off=lambda recipe: None if recipe.runs(switch) else off_reason,
                 outside=with_precision(lambda recipe, hasher: {**processes(recipe), **(outside(recipe, hasher)
                                                                                      if outside else {})},
                                        kind="training"))


PT_KEYS = ("pt", "data.cutoff_len", "data.val_size", "data.seed", *PRECISION_KEYS)


def pt_reads(recipe):
    """Off, it reads nothing but the (empty) list; on, its section, the split keys and its corpus."""
    return ("base_model",), (PT_KEYS if recipe.pt.dataset else ("pt.dataset",))


def pt_outside(recipe, hasher) -> dict:
    """Its corpus and the adapters merged into the base (by content); on, also the device and dtypes it trains in
    and how many processes (off, it loads no model)."""
    identity = {"corpus": source_identity(pt_sources(recipe), hasher)}
    if recipe.model.adapters():
        identity["adapters"] = [checkpoint_identity(check_adapter(a), hasher) for a in recipe.model.adapters()]
    if not recipe.pt.dataset:
        return identity
    return {**identity, "precision": precision_identity(recipe.model, stage_device(recipe.launcher, "training")),
            **processes(recipe)}


PT_MODEL = Stage("pt_model", entry=train_pt_model, parents=("base_model",), keys=PT_KEYS, select=pt_reads,
                 locate=("data.dataset_dir", "data.dataset_info", "data.allowed_roots", "model.adapter_name_or_path",
                         *LAUNCHER), outside=pt_outside,
                 tables={"quarantine": "quarantine"}, training=True, trains=lambda recipe: bool(recipe.pt.dataset),
                 writes=TrainingWrites("pt", start_from="base_model", full_model=True))

SFT_ADAPTER = switchable_training_stage("sft_adapter", train_sft_adapter, ("pt_model", "formatted_data"),
                                        ("sft", "data.cutoff_len", *PRECISION_KEYS), switch="sft",
                                        off_reason="sft is not in the recipe's stages",
                                        writes=TrainingWrites("sft", start_from="pt_model"))
REWARD_MODEL = switchable_training_stage("reward_model", train_reward_model, ("pt_model", "formatted_data"),
                                         ("reward", "data.cutoff_len", *PRECISION_KEYS), switch="rm",
                                         off_reason="rm is not in the recipe's stages",
                                         writes=TrainingWrites("reward", start_from="pt_model", full_model=True))
DPO_ADAPTER = switchable_training_stage("dpo_adapter", train_dpo_adapter, ("pt_model", "sft_adapter", "formatted_data"),
                                        ("dpo", "data.cutoff_len", *PRECISION_KEYS), switch="dpo",
                                        off_reason="dpo (or kto) is not in the recipe's stages",
                                        writes=TrainingWrites("dpo", start_from="pt_model"))

# ppo's keys but ppo.reward_model, which only locates a reward model outside the graph (its content is fingerprinted),
# and the operational keys (checkpointing), read but not fingerprinted
PPO_KEYS = tuple(f"ppo.{k}" for k in PpoSection.model_fields if k != "reward_model" and is_fingerprinted(PpoSection, k))
PPO_LOCATE = ("ppo.reward_model", *(f"ppo.{k}" for k in PpoSection.model_fields
                                    if not is_fingerprinted(PpoSection, k) and not is_threshold(PpoSection, k)))


def ppo_outside(recipe, hasher) -> dict:
    """The reward model outside the graph, by content, where ppo reads ppo.reward_model (rm not in the stages)."""
    if not recipe.runs("ppo") or recipe.runs("rm"):
        return processes(recipe) if recipe.runs("ppo") else {}
    return {**processes(recipe), "reward_model": checkpoint_identity(Path(recipe.ppo.reward_model).expanduser(), hasher)}


PPO_PARENTS = ("pt_model", "sft_adapter", "dpo_adapter", "reward_model", "formatted_data")
PPO_ADAPTER = Stage("ppo_adapter", entry=train_ppo_adapter, parents=PPO_PARENTS, keys=(*PPO_KEYS, *PRECISION_KEYS),
                    locate=(*LAUNCHER, *PPO_LOCATE), training=True,
                    writes=TrainingWrites("ppo", start_from="pt_model"),
                    select=lambda recipe: ((parents_run(PPO_PARENTS, recipe), (*PPO_KEYS, *PRECISION_KEYS))
                                           if recipe.runs("ppo") else ((), ("stages",))),
                    off=lambda recipe: None if recipe.runs("ppo") else "ppo is not in the recipe's stages",
                    outside=with_precision(ppo_outside, kind="training"))


def grpo_parents(parents: tuple[str, ...], recipe) -> tuple[str, ...]:
    """The policy chain that runs, and the reward model only where a reward term reads it."""
    return tuple(p for p in parents_run(parents, recipe) if p != "reward_model" or recipe.grpo.uses_reward_model())


def grpo_outside(recipe, hasher) -> dict:
    """A user scorer's source, and what samples the rollouts here (vLLM or transformers)."""
    if not recipe.runs("grpo"):
        return {}
    return {"reward_code": reward_identity(recipe.grpo.rewards),
            "rollout_backend": rollout_backend(stage_device(recipe.launcher, "training"))}


GRPO_ADAPTER = switchable_training_stage(
    "grpo_adapter", train_grpo_adapter, ("pt_model", "sft_adapter", "dpo_adapter", "reward_model", "formatted_data"),
    ("grpo", *PRECISION_KEYS), switch="grpo", off_reason="grpo is not in the recipe's stages",
    writes=TrainingWrites("grpo", start_from="pt_model"), select=grpo_parents, outside=grpo_outside)


# --- exports --------------------------------------------------------------------------------------------------

# a stage that may run as a pod reads the launcher to know where it runs: the device's identity is fingerprinted
# (with_precision), the launcher's keys are not
REMOTE = LAUNCHER

MERGED_PARENTS = ("pt_model", "sft_adapter", "dpo_adapter", "ppo_adapter", "grpo_adapter", "formatted_data")


def merged_reads(recipe):
    """It merges the training stages the recipe runs (sft, dpo; neither: pt_model alone, the base model with its
    adapters): a stage that does not run is not a parent."""
    return parents_run(MERGED_PARENTS, recipe), PRECISION_KEYS


MERGED_MODEL = Stage("merged_model", entry=merge_model, parents=MERGED_PARENTS, keys=PRECISION_KEYS,
                     select=merged_reads, locate=REMOTE, outside=with_precision(kind="export"), remote="export",
                     writes=ExportWrites("pt_model"))


def quantized_stage(method: str, entry) -> Stage:
    return Stage(f"{method}_model", entry=entry, parents=("merged_model", "formatted_data"),
                 keys=("quantize", "data.cutoff_len", *PRECISION_KEYS), locate=REMOTE,
                 outside=with_precision(kind="export"), remote="export",
                 writes=ExportWrites("merged_model", times=None))  # a 4-bit export: P bytes


GPTQ_MODEL = quantized_stage("gptq", quantize_gptq)
AWQ_MODEL = quantized_stage("awq", quantize_awq)


# --- evaluation -----------------------------------------------------------------------------------------------

# the evaluations of a training stage a recipe can leave out: off while it does
EVALUATED_TRAINING = {"sft": "sft is not in the recipe's stages", "dpo": "dpo (or kto) is not in the recipe's stages",
                      "ppo": "ppo is not in the recipe's stages", "grpo": "grpo is not in the recipe's stages"}


def evaluation_off(stage: str):
    """eval_sft and eval_dpo are not configured while the recipe does not run that stage; every other evaluation
    always is."""
    if stage not in EVALUATED_TRAINING:
        return None
    return lambda recipe: None if recipe.runs(stage) else EVALUATED_TRAINING[stage]


def evaluation_reads(stage: str, parents: tuple[str, ...], keys: tuple[str, ...]):
    """Off, only the stages list; without the rm stage, no reward model (the reward score is then None); without
    sft, DPO's model is pt_model + DPO."""
    def select(recipe):
        if stage in EVALUATED_TRAINING and not recipe.runs(stage):
            return (), ("stages",)
        return parents_run(parents, recipe), keys
    return select


def evaluation_outside(recipe, hasher) -> dict:
    """What an evaluation depends on beyond its keys (the whole evaluation section, infer_backend included): the
    scorer's code, and the backend that generates where it runs (auto picks vLLM only where it can run)."""
    return {"scorer": scorer_identity(recipe.evaluation.scorer),
            "generation_backend": generation_backend(recipe.evaluation, stage_device(recipe.launcher, "evaluation"))}


def evaluation_stage(stage: str) -> Stage:
    parents, keys = (*STAGE_MODELS[stage], "formatted_data", "reward_model"), ("evaluation", *PRECISION_KEYS)
    return Stage(f"eval_{stage}", entry=evaluate_stage, parents=parents, keys=keys,
                 select=evaluation_reads(stage, parents, keys), off=evaluation_off(stage), locate=REMOTE,
                 outside=with_precision(evaluation_outside, kind="evaluation"), remote="evaluation")


EVALUATIONS = {stage: evaluation_stage(stage) for stage in EVALUATED}  # "sft" -> eval_sft, ...
MODEL_COMPARISON = Stage("model_comparison", entry=compare_stages, parents=tuple(f"eval_{s}" for s in EVALUATED))


# --- deployment -----------------------------------------------------------------------------------------------

SMOKE_DATA = ("formatted_data", "clean_data")  # the smoke question: the first plain-chat row of the SFT eval split


def deployment_reads(recipe):
    """Only the export it serves, and the data its smoke question comes from; the recipe's name only when it names
    the served model; the precision keys (its smoke test loads the model)."""
    keys = ("serve",) if recipe.serve.served_model_name else ("serve", "name")
    return ("model_comparison", f"{recipe.serve.model}_model", *SMOKE_DATA), (*keys, *PRECISION_KEYS)


def deployment_outside(recipe, hasher) -> dict:
    """Whether vLLM can run here: where it can, the deployment also serves the export with vLLM (loads_in_vllm)."""
    return {"vllm_runs_here": vllm_usable()}


DEPLOYMENT = Stage("deployment", entry=deploy,
                   parents=("model_comparison", "merged_model", "gptq_model", "awq_model", *SMOKE_DATA),
                   keys=("serve", "name", *PRECISION_KEYS), select=deployment_reads,
                   outside=with_precision(deployment_outside))


# every stage, parents before children: what a recipe's plan is computed over
STAGES = (RAW_DATA, CLEAN_DATA, BASE_MODEL, FORMATTED_DATA, PT_MODEL, SFT_ADAPTER, REWARD_MODEL, DPO_ADAPTER, PPO_ADAPTER,
          GRPO_ADAPTER, MERGED_MODEL, GPTQ_MODEL, AWQ_MODEL, *EVALUATIONS.values(), MODEL_COMPARISON, DEPLOYMENT)
