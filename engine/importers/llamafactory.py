"""Import LLaMA-Factory training YAMLs (one per stage, as `llamafactory-cli train` takes them) into one
tuneline recipe. Known keys are mapped; every other key is reported by name with the reason, never dropped
silently."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.data.templates import MULTIMODAL_TEMPLATES, USER_MARKERS
from engine.errors import RecipeError
from engine.recipe import Recipe, describe, read_yaml
from engine.train.sharding import LLAMAFACTORY_DEEPSPEED

STAGE_SECTIONS = {"pt": "pt", "sft": "sft", "rm": "reward", "dpo": "dpo", "kto": "dpo", "ppo": "ppo"}
MODEL_KEYS = {"model_name_or_path", "bf16", "fp16", "pure_bf16", "infer_dtype"}  # precision: one for every stage
DATA_KEYS = {"dataset_dir", "cutoff_len", "val_size"}
TRAIN_KEYS = {"finetuning_type", "freeze_trainable_layers", "quantization_bit", "lora_rank", "lora_alpha",
              "lora_dropout", "lora_target", "loraplus_lr_ratio", "report_to", "learning_rate", "num_train_epochs",
              "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
              "warmup_ratio", "logging_steps", "seed", "save_steps", "save_total_limit"}
STAGE_KEYS = {"sft": {"packing"}, "dpo": {"pref_beta", "pref_loss", "pref_ftx"}, "kto": {"pref_beta"}, "rm": set(), "pt": set(),
              "ppo": {"reward_model", "reward_model_type", "ppo_buffer_size", "ppo_epochs", "ppo_score_norm",
                      "ppo_target", "ppo_whiten_rewards", "max_new_tokens", "do_sample", "temperature", "top_p",
                      "top_k"}}
# LLaMA-Factory's flash_attn values as transformers' attention implementations
TRACKERS = ("none", "tensorboard", "mlflow", "wandb")  # report_to values a stage takes as they are
FLASH_ATTN = {"auto": "sdpa", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash_attention_2"}
# keys tuneline answers itself: each is reported with what takes its place
HANDLED = {
    "do_train": "the asset graph runs every stage", "do_predict": "every model is evaluated by its eval_* asset",
    "predict_with_generate": "evaluation generates greedy answers to the eval split",
    "output_dir": "artifacts are fingerprinted directories under the artifact root",
    "overwrite_output_dir": "artifacts are immutable; a changed input makes a new one",
    "overwrite_cache": "datasets are cached by fingerprint", "plot_loss": "loss curves are in each asset's metadata",
    "preprocessing_num_workers": "formatting streams rows in one process",
    "trust_remote_code": "checkpoints never run code of their own (safetensors only)",
    "eval_strategy": "each stage evaluates on the held-out split when it finishes",
    "per_device_eval_batch_size": "evaluation uses the training batch size",
    "ddp_timeout": "torchrun and accelerate keep their own timeouts",
    "create_new_adapter": "a stage after sft always trains a new adapter on the merged model",
}
# keys of `llamafactory-cli export` configs: the merge and the 4-bit exports are assets of every recipe
EXPORT_NOTES = {
    "export_dir": "the merged and quantized exports are artifacts (merged_model, gptq_model, awq_model)",
    "adapter_name_or_path": "the adapters merged are the recipe's own training stages (imported alone, an export "
                            "config's adapter becomes model.adapter_name_or_path)",
    "export_size": "exports are written as one safetensors checkpoint", "export_device": "the merge runs on the "
    "device policy's device", "export_legacy_format": "exports are safetensors",
    "export_quantization_dataset": "quantization calibrates on the formatted eval split",
    "export_quantization_nsamples": "set quantize.calibration_samples",
    "export_quantization_maxlen": "quantization calibrates at data.cutoff_len",
    "export_hub_model_id": "exports are not pushed to a hub",
}
# keys only a multimodal (vision, audio, video) config has: tuneline trains text-only models
MULTIMODAL_KEYS = ("image_max_pixels", "image_min_pixels", "video_max_pixels", "video_min_pixels", "video_fps",
                   "video_maxlen", "audio_sampling_rate", "freeze_vision_tower", "freeze_multi_modal_projector",
                   "freeze_language_model", "train_mm_proj_only", "image_resolution", "video_resolution")


# words that name vision, audio or video checkpoints
MULTIMODAL_MODEL = re.compile(r"(?i)([-_/]vl\b|[-_]vl[-_]|llava|vision|paligemma|pixtral|idefics|intern-?vl|"
                              r"minicpm-[vo]|qwen2-audio|omni|mllama|cogvlm|video)")


def refuse_multimodal(config: dict, source: Path) -> None:
    found = [k for k in MULTIMODAL_KEYS if k in config]
    if found:
        raise RecipeError(f"{source} is a multimodal config ({', '.join(found)}): tuneline trains text-only models")
    if str(config.get("template", "")) in MULTIMODAL_TEMPLATES:
        raise RecipeError(f"{source}: template {config['template']!r} is a multimodal LLaMA-Factory template: "
                          "tuneline trains text-only models")
    for key in ("model_name_or_path", "adapter_name_or_path"):
        if isinstance(config.get(key), str) and MULTIMODAL_MODEL.search(config[key]):
            raise RecipeError(f"{source}: {key} {config[key]!r} names a multimodal (vision, audio or video) "
                              "checkpoint: tuneline trains text-only models")


def note_remote(key: str, value: Any, source: Path, notes: list[str]) -> None:
    """A model or adapter that is not a local directory: tuneline loads local checkpoints only (said for every kind
    of config alike)."""
    for item in str(value).split(","):
        if item.strip() and item.strip() != "tiny" and not Path(item.strip()).expanduser().exists():
            notes.append(f"{source}: {key} {item.strip()!r} is imported but is not a local path: tuneline loads local "
                         "checkpoints only (download it, e.g. with `hf download`, and point the recipe there)")


def is_export(config: dict) -> bool:
    """An `llamafactory-cli export` config: it names an export directory, not a training stage."""
    return "stage" not in config and ("export_dir" in config or "adapter_name_or_path" in config)


# keys of how conversations look and which rows are read: the same for every stage, in the data section
LOOK_KEYS = {"template", "default_system", "max_samples"}


def merge_look_key(recipe: dict, key: str, value: Any, source: Path, notes: list[str]) -> None:
    """One of LOOK_KEYS into the data section, from a training or an export config alike."""
    if key == "template" and value not in USER_MARKERS:
        notes.append(f"{source}: template {value!r} not imported: not a LLaMA-Factory text template tuneline can "
                     "compare with the checkpoint's own (which renders every row either way)")
        return
    if recipe.get("data", {}).get(key) not in (None, value):
        notes.append(f"{source}: {key} {value!r} differs from an earlier file's; the last one is kept")
    recipe.setdefault("data", {})[key] = value


def merge_export(recipe: dict, config: dict, source: Path, notes: list[str], alone: bool) -> None:
    """Map an export (merge, quantize) config: its quantization bits into quantize, and, imported without training
    configs (`alone`), its adapter into model.adapter_name_or_path; the rest is said."""
    for key, value in config.items():
        if key == "export_quantization_bit":
            recipe.setdefault("quantize", {})[key] = value
            recipe.setdefault("serve", {})["model"] = "gptq"  # LLaMA-Factory's quantized export is GPTQ
            notes.append(f"{source}: export_quantization_bit {value} imported: the GPTQ export is served (an AWQ "
                         "export is built beside it)")
        elif key == "model_name_or_path":
            note_remote(key, value, source, notes)
            recipe.setdefault("model", {}).setdefault(key, value)
        elif key == "adapter_name_or_path" and alone:
            note_remote(key, value, source, notes)
            recipe.setdefault("model", {})[key] = value
        elif key in LOOK_KEYS:
            merge_look_key(recipe, key, value, source, notes)
        elif key in EXPORT_NOTES:
            notes.append(f"{source}: {key} not imported: {EXPORT_NOTES[key]}")
        elif key in HANDLED:
            notes.append(f"{source}: {key} not imported: {HANDLED[key]}")
        elif key not in ("finetuning_type", "stage"):
            notes.append(f"{source}: unknown export key {key} = {value!r} not imported")


def lora_alpha_defaults(recipe: dict) -> None:
    """LLaMA-Factory's lora_alpha defaults to twice lora_rank (and lora_rank to 8) when the YAML sets neither."""
    for name in ("pt", "sft", "reward", "dpo", "ppo"):
        section = recipe.get(name)
        if section is not None and section.get("finetuning_type", "lora") in ("lora", "dora"):
            section.setdefault("lora_rank", 8)
            section.setdefault("lora_alpha", 2 * section["lora_rank"])


def merge_stage(recipe: dict, config: dict, source: Path, notes: list[str]) -> None:
    """Map one LLaMA-Factory config into `recipe` (a dict of sections), noting every key it does not map."""
    stage = config.get("stage", "sft")
    if stage not in STAGE_SECTIONS:
        notes.append(f"{source}: stage {stage!r} is not imported (tuneline imports "
                     f"{', '.join(STAGE_SECTIONS)}); its keys are ignored")
        return
    section = recipe.setdefault(STAGE_SECTIONS[stage], {})
    if stage == "kto":
        section["pref_loss"] = "kto"
    for key, value in config.items():
        if key == "stage":
            continue  # chose the section above
        if key in MODEL_KEYS:
            if recipe.get("model", {}).get(key) not in (None, value):
                notes.append(f"{source}: {key} {value!r} differs from an earlier file's; the last one is kept")
            elif key == "model_name_or_path" and key not in recipe.get("model", {}):
                note_remote(key, value, source, notes)
            recipe.setdefault("model", {})[key] = value
        elif key == "adapter_name_or_path":  # the SFT adapter a later stage starts from (kept only without sft)
            note_remote(key, value, source, notes)
            recipe.setdefault("_adapters", []).append((source, value))
        elif key in LOOK_KEYS:
            merge_look_key(recipe, key, value, source, notes)
        elif key in DATA_KEYS:
            recipe.setdefault("data", {})[key] = value
        elif key == "dataset" and stage == "pt":  # raw text for continued pre-training, not chat data
            section["dataset"] = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
        elif key == "dataset":
            names = value.split(",") if isinstance(value, str) else list(value)
            data = recipe.setdefault("data", {})
            data["dataset"] = list(dict.fromkeys([*data.get("dataset", []), *(n.strip() for n in names)]))
        elif key == "use_dora":
            if value:
                section["finetuning_type"] = "dora"
        elif key == "report_to":  # one tracker per stage: LLaMA-Factory's `all` (every one installed) has no match
            section[key] = value if value in TRACKERS else "none"
            if value not in TRACKERS:
                notes.append(f"{source}: report_to {value!r} is not supported (one of {', '.join(TRACKERS)}); set to "
                             "none")
        elif key in TRAIN_KEYS or key in STAGE_KEYS[stage]:
            if key == "finetuning_type" and section.get("finetuning_type") == "dora":
                continue
            section[key] = value
        elif key == "disable_gradient_checkpointing":  # LLaMA-Factory checkpoints unless told not to; tuneline
            section["gradient_checkpointing"] = not value  # does not unless told to (absent: tuneline's default, off)
        elif key == "flash_attn":
            if value not in FLASH_ATTN:
                notes.append(f"{source}: flash_attn {value!r} has no equivalent ({', '.join(FLASH_ATTN)}); sdpa is "
                             "used")
            section["attn_implementation"] = FLASH_ATTN.get(value, "sdpa")
        elif key == "enable_liger_kernel":
            section[key] = bool(value)
        elif key == "neat_packing":  # packing without cross-row attention: what tuneline's packing always is
            section["packing"] = bool(value) or section.get("packing", False)
        elif key == "export_quantization_bit":
            recipe.setdefault("quantize", {})[key] = value
        elif key == "fsdp" and value:  # transformers' fsdp: on (its strategy words are fsdp_config's job)
            recipe.setdefault("launcher", {}).setdefault("fsdp", "fsdp2")
            notes.append(f"{source}: fsdp {value!r} imported as launcher.fsdp (fsdp2 unless fsdp_config names a file)")
        elif key == "fsdp_config" and isinstance(value, str):
            recipe.setdefault("launcher", {})["fsdp"] = value
        elif key == "deepspeed":  # into the trainer's arguments, ranks started by torchrun: as LLaMA-Factory does
            shipped = LLAMAFACTORY_DEEPSPEED.get(Path(str(value)).name)
            recipe.setdefault("launcher", {})["deepspeed"] = shipped or value
            notes.append(f"{source}: deepspeed {value!r} imported as launcher.deepspeed {shipped}, the shipped copy of "
                         "LLaMA-Factory's example" if shipped else f"{source}: deepspeed {value!r} imported as "
                         "launcher.deepspeed; a relative path is read from where tuneline runs")
        elif key in HANDLED:
            notes.append(f"{source}: {key} not imported: {HANDLED[key]}")
        else:
            notes.append(f"{source}: unknown key {key} = {value!r} not imported (tuneline has no equivalent)")


TRAINING_ORDER = ("pt", "sft", "rm", "dpo", "kto", "ppo")


def stages_of(configs: list[tuple[Path, dict]]) -> list[str]:
    """The recipe's stages: the files' `stage:` values, in training order, as LLaMA-Factory runs them (an export
    config adds none)."""
    named = {config.get("stage", "sft") for _, config in configs if not is_export(config)}
    return [s for s in TRAINING_ORDER if s in named]


def starting_adapters(recipe: dict, stages: list[str], notes: list[str]) -> None:
    """A training config's adapter_name_or_path: the model a later stage starts from. Beside an imported sft stage it
    is that stage's output (the recipe's own sft adapter); without one it becomes model.adapter_name_or_path."""
    for source, value in recipe.pop("_adapters", []):
        if "sft" in stages:
            notes.append(f"{source}: adapter_name_or_path {value!r} not imported: the stage starts from the "
                         "recipe's own sft stage")
        else:
            recipe.setdefault("model", {})["adapter_name_or_path"] = value
            notes.append(f"{source}: adapter_name_or_path {value!r} imported as model.adapter_name_or_path: merged "
                         "into the base, and a new adapter trained on top (LLaMA-Factory's create_new_adapter: true)")


def graph_reward_model(recipe: dict, stages: list[str], notes: list[str]) -> None:
    """A ppo config's reward_model beside an imported rm config is that stage's output: the graph's reward_model
    is used, and the path is dropped with a note."""
    ppo = recipe.get("ppo", {})
    if "ppo" in stages and "rm" in stages and "reward_model" in ppo:
        notes.append(f"ppo: reward_model {ppo.pop('reward_model')!r} not imported: ppo is scored by the recipe's own "
                     "rm stage (the graph's reward_model)")


def import_configs(paths: list[Path], eval_dataset: list[str] | None = None) -> tuple[str, list[str]]:
    """(recipe YAML text, notes on every key not imported). Raises RecipeError if the result is not a valid recipe.

    `eval_dataset`: registry names of chat data to evaluate (and calibrate quantization) on, for configs that name
    none (pre-training alone, an export alone): every export is evaluated on held-out chat rows."""
    # LLaMA-Factory names datasets in <dataset_dir>/dataset_info.json, which tuneline reads unchanged
    recipe: dict[str, Any] = {"name": paths[0].stem,
                              "data": {"dataset_dir": "data", "dataset_info": "dataset_info.json"}}
    notes: list[str] = []
    configs = []
    for path in paths:
        if not path.is_file():
            raise RecipeError(f"{path} does not exist (expected a LLaMA-Factory training YAML)")
        config = read_yaml(path, "LLaMA-Factory config") or {}
        if not isinstance(config, dict):
            raise RecipeError(f"{path}: expected a mapping of keys, as llamafactory-cli train takes")
        refuse_multimodal(config, path)
        configs.append((path, config))
    alone = all(is_export(config) for _, config in configs)
    for path, config in configs:
        if is_export(config):
            merge_export(recipe, config, path, notes, alone)
        else:
            merge_stage(recipe, config, path, notes)
    stages = stages_of(configs)
    starting_adapters(recipe, stages, notes)
    graph_reward_model(recipe, stages, notes)
    data = recipe["data"]
    if eval_dataset:
        data["dataset"] = list(dict.fromkeys([*data.get("dataset", []), *eval_dataset]))
    lora_alpha_defaults(recipe)
    from engine.recipe import llamafactory_clean_section  # LLaMA-Factory cleans nothing: keep every row it trains on
    recipe["clean"] = llamafactory_clean_section()
    recipe = {"name": recipe.pop("name"), "stages": stages, **recipe}
    try:
        Recipe.model_validate(recipe)
    except ValidationError as exc:
        problems = (f"the imported recipe is not valid: {describe(e)}" for e in exc.errors())
        raise RecipeError("\n".join(problems)) from None
    if not data.get("dataset"):  # an empty list would mean every registered dataset
        raise RecipeError(f"{', '.join(str(p) for p in paths)}: no config names a chat dataset, and tuneline "
                          "evaluates (and calibrates quantization) on held-out chat rows: pass --eval-dataset NAME[,NAME] "
                          "(names from dataset_info.json)")
    header = "# Imported from LLaMA-Factory: " + ", ".join(str(p) for p in paths) + "\n"
    header += "".join(f"# {note}\n" for note in notes)
    return header + yaml.safe_dump(recipe, sort_keys=False), notes
