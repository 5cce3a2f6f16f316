"""Import LLaMA-Factory training YAMLs (one per stage, as `llamafactory-cli train` takes them) into one
tuneline recipe. Known keys are mapped; every other key is reported by name with the reason, never dropped
silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.errors import RecipeError
from engine.recipe import Recipe, describe, read_yaml

STAGE_SECTIONS = {"pt": "pt", "sft": "sft", "rm": "reward", "dpo": "dpo", "kto": "dpo"}
MODEL_KEYS = {"model_name_or_path", "bf16", "fp16", "pure_bf16", "infer_dtype"}  # precision: one for every stage
DATA_KEYS = {"dataset_dir", "cutoff_len", "val_size"}
TRAIN_KEYS = {"finetuning_type", "freeze_trainable_layers", "quantization_bit", "lora_rank", "lora_alpha",
              "lora_dropout", "lora_target", "loraplus_lr_ratio", "report_to", "learning_rate", "num_train_epochs",
              "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
              "warmup_ratio", "logging_steps", "seed", "save_steps", "save_total_limit"}
STAGE_KEYS = {"sft": {"packing"}, "dpo": {"pref_beta", "pref_loss"}, "kto": {"pref_beta"}, "rm": set(), "pt": set()}
# keys tuneline answers itself: each is reported with what takes its place
HANDLED = {
    "do_train": "the asset graph runs every stage",
    "output_dir": "artifacts are fingerprinted directories under the artifact root",
    "overwrite_output_dir": "artifacts are immutable; a changed input makes a new one",
    "overwrite_cache": "datasets are cached by fingerprint", "plot_loss": "loss curves are in each asset's metadata",
    "template": "the model's own chat template renders every conversation",
    "preprocessing_num_workers": "formatting streams rows in one process",
    "trust_remote_code": "checkpoints never run code of their own (safetensors only)",
    "eval_strategy": "each stage evaluates on the held-out split when it finishes",
    "per_device_eval_batch_size": "evaluation uses the training batch size",
    "ddp_timeout": "stages run in one process", "deepspeed": "stages run in one process (no DeepSpeed)",
    "max_samples": "use evaluation.max_samples for generation; training uses every clean row",
}


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
            elif (key == "model_name_or_path" and key not in recipe.get("model", {})
                  and not Path(str(value)).expanduser().is_dir()):
                notes.append(f"{source}: {key} {value!r} is imported but is not a local directory: tuneline loads "
                             "local checkpoints only (download it, e.g. with `hf download`, and point the recipe "
                             "there)")
            recipe.setdefault("model", {})[key] = value
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
        elif key == "report_to":
            section[key] = value if value in ("none", "tensorboard", "mlflow") else "none"
            if value not in ("none", "tensorboard", "mlflow"):
                notes.append(f"{source}: report_to {value!r} is not supported (none, tensorboard, mlflow); set to none")
        elif key in TRAIN_KEYS or key in STAGE_KEYS[stage]:
            if key == "finetuning_type" and section.get("finetuning_type") == "dora":
                continue
            section[key] = value
        elif key == "export_quantization_bit":
            recipe.setdefault("quantize", {})[key] = value
        elif key in HANDLED:
            notes.append(f"{source}: {key} not imported: {HANDLED[key]}")
        else:
            notes.append(f"{source}: unknown key {key} = {value!r} not imported (tuneline has no equivalent)")


def stages_of(configs: list[tuple[Path, dict]], notes: list[str]) -> list[str]:
    """The recipe's stages from the files' `stage:` values, in training order; sft always runs (merge, evaluation
    and serving start from it), pt has its own switch (pt.dataset)."""
    named = {config.get("stage", "sft") for _, config in configs}
    if "sft" not in named and named & {"rm", "dpo", "kto"}:  # DPO starts from the SFT model: say which one
        notes.append("no stage sft was imported: tuneline runs sft in every recipe, with the defaults of the sft "
                     "section")
    return ["sft", *(s for s in ("rm", "dpo", "kto") if s in named)]


def import_configs(paths: list[Path]) -> tuple[str, list[str]]:
    """(recipe YAML text, notes on every key not imported). Raises RecipeError if the result is not a valid recipe."""
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
        merge_stage(recipe, config, path, notes)
        configs.append((path, config))
    recipe = {"name": recipe.pop("name"), "stages": stages_of(configs, notes), **recipe}
    try:
        Recipe.model_validate(recipe)
    except ValidationError as exc:
        problems = (f"the imported recipe is not valid: {describe(e)}" for e in exc.errors())
        raise RecipeError("\n".join(problems)) from None
    header = "# Imported from LLaMA-Factory: " + ", ".join(str(p) for p in paths) + "\n"
    header += "".join(f"# {note}\n" for note in notes)
    return header + yaml.safe_dump(recipe, sort_keys=False), notes
