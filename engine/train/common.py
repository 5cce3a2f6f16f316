"""Pieces every training stage shares: what is trained (LoRA, DoRA, full, freeze, QLoRA), the optimizer
(LoRA+ when asked), trainer arguments, experiment tracking, and the run's summary."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from engine.models.attention import training_attention
from engine.models.device import (Precision, device, device_type, load_kwargs, mixed_precision, train_dtype, upcast_trainable,
                                  upcast_trainable_parameters)
from engine.errors import RecipeError
from engine.models.load import ADAPTER_DIR, FULL_DIR

if TYPE_CHECKING:
    from engine.recipe import TrainSection


def is_adapter(cfg: TrainSection) -> bool:
    return cfg.finetuning_type in ("lora", "dora")


def lora_config(cfg: TrainSection, task_type: str) -> LoraConfig:
    """LLaMA-Factory's lora_target: "all" means every linear layer, else comma-separated module names."""
    targets = "all-linear" if cfg.lora_target == "all" else [t.strip() for t in cfg.lora_target.split(",")]
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task_type, use_dora=cfg.finetuning_type == "dora")


def check_lora_targets(recipe, stages: tuple[str, ...] = ("pt", "sft", "reward", "dpo")) -> None:
    """Each named lora_target (PEFT's rule: a module name or its dotted suffix) must be a module of the recipe's
    model: a misspelt one would otherwise leave those layers untrained without a word."""
    names = None
    for stage in stages:
        cfg = getattr(recipe, stage)
        if not is_adapter(cfg) or cfg.lora_target == "all":
            continue
        if names is None:
            from engine.models.load import module_names
            names = module_names(recipe.model) or {}
        if not names:
            return  # transformers cannot build this architecture from its config: PEFT checks at training
        targets = [t.strip() for t in cfg.lora_target.split(",") if t.strip()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, kind in names.items() if kind == "Linear"})
            raise RecipeError(f"{stage}.lora_target: {', '.join(missing)} is not a module of the model (its linear "
                              f"layers: {', '.join(linear)}; or 'all')")


def check_speed_levers(cfg: TrainSection, key: str) -> None:
    """The attention kernel and Liger kernels the recipe asks for must work here: say so before any work starts."""
    cuda = torch.cuda.is_available()
    if cfg.attn_implementation == "flash_attention_2" and (importlib.util.find_spec("flash_attn") is None or not cuda):
        raise RecipeError(f"{key}.attn_implementation flash_attention_2 needs the flash-attn package and a CUDA GPU "
                          f"(flash-attn installed: {importlib.util.find_spec('flash_attn') is not None}, GPU: {cuda}); "
                          "use sdpa")
    if cfg.attn_implementation == "flex_attention" and not cuda:
        raise RecipeError(f"{key}.attn_implementation flex_attention trains on a GPU only (PyTorch's FlexAttention has "
                          "no backward pass on a CPU); use sdpa")
    if cfg.enable_liger_kernel and (importlib.util.find_spec("liger_kernel") is None or not cuda):
        raise RecipeError(f"{key}.enable_liger_kernel needs the liger-kernel package and a CUDA GPU (installed: "
                          f"{importlib.util.find_spec('liger_kernel') is not None}, GPU: {cuda}); set it to false")


def check_quantized_training(cfg: TrainSection, key: str) -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU: say so before any work starts."""
    if cfg.quantization_bit is None:
        return
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise RecipeError(f"{key}.quantization_bit {cfg.quantization_bit} (QLoRA) needs bitsandbytes and a CUDA GPU "
                          f"(bitsandbytes installed: {importlib.util.find_spec('bitsandbytes') is not None}, "
                          f"GPU: {torch.cuda.is_available()}); remove it to train a plain LoRA on this machine")


def quantized_load_kwargs(cfg: TrainSection, precision: Precision | None = None) -> dict:
    """from_pretrained arguments for a QLoRA base: bitsandbytes NF4 (or 8-bit) weights, computing in the policy's
    training dtype (on a GPU: bf16 where supported, else fp16, unless the recipe says)."""
    if cfg.quantization_bit is None:
        return {}
    from transformers import BitsAndBytesConfig
    if cfg.quantization_bit == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=train_dtype(precision or Precision()))
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": device()}}


def load_trainable(model_dir: Path, cfg: TrainSection, model_class=None, *, precision: Precision | None = None,
                   **kwargs):
    """The model a stage starts from (a causal LM unless `model_class` says otherwise) on the policy's device, its
    frozen weights in the policy's training dtype, or quantized by bitsandbytes when the recipe asks for QLoRA."""
    from transformers import AutoModelForCausalLM, set_seed
    set_seed(cfg.seed)  # a new head (the reward model's score) comes from the recipe's seed, in any process
    model_class = model_class or AutoModelForCausalLM
    precision = precision or Precision()
    if cfg.quantization_bit is None:
        return model_class.from_pretrained(model_dir, trust_remote_code=False, **load_kwargs(train_dtype(precision)),
                                           **kwargs)
    check_quantized_training(cfg, "training")
    from peft import prepare_model_for_kbit_training
    model = model_class.from_pretrained(model_dir, trust_remote_code=False, dtype=train_dtype(precision),
                                        **quantized_load_kwargs(cfg, precision), **kwargs)
    return prepare_model_for_kbit_training(model)


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not layers:
        raise RecipeError("finetuning_type freeze: the model has no list of decoder layers to choose from")
    return max(layers, key=len)


def prepare_model(model, cfg: TrainSection, task_type: str, precision: Precision | None = None):
    """The model as it trains: wrapped in a LoRA/DoRA adapter, all weights trainable (full), or all frozen but
    `freeze_trainable_layers` decoder layers and, for a reward model, its score head (freeze). Trainable weights
    are float32 unless the recipe says pure_bf16 (frozen ones stay in the dtype they were loaded in)."""
    from transformers import set_seed
    set_seed(cfg.seed)  # the adapter's initial weights, whichever way the model was loaded (DPO: SFT merged in)
    check_speed_levers(cfg, "training")
    # however it was loaded (DPO: the SFT model merged); sdpa trains as the row attention (engine/models/attention.py)
    model.set_attn_implementation(training_attention(cfg.attn_implementation, model))
    upcast = upcast_trainable(precision or Precision())
    if is_adapter(cfg):
        model = get_peft_model(model, lora_config(cfg, task_type), autocast_adapter_dtype=upcast)
        if upcast:
            upcast_trainable_parameters(model)  # a reward model's new score head, too
        return model
    model.requires_grad_(True)  # a model with an adapter merged in comes back frozen
    if cfg.finetuning_type == "freeze":
        layers = decoder_layers(model)
        n = cfg.freeze_trainable_layers
        if abs(n) > len(layers):
            raise RecipeError(f"freeze_trainable_layers {n}: the model has only {len(layers)} decoder layers")
        chosen = layers[-n:] if n > 0 else layers[:-n]
        model.requires_grad_(False)
        chosen.requires_grad_(True)
        head = getattr(model, "score", None)
        if head is not None:
            head.requires_grad_(True)
    if upcast:
        upcast_trainable_parameters(model)
    return model


def training_autocast(args):
    """The autocast a trainer with these arguments trains under (bf16 or fp16 AMP), for work done outside its
    steps; nothing without AMP."""
    if not (args.bf16 or args.fp16):
        return contextlib.nullcontext()
    return torch.autocast(device_type(), dtype=torch.bfloat16 if args.bf16 else torch.float16)


def optimizers(model, cfg: TrainSection) -> tuple:
    """LoRA+ (PEFT's optimizer with the B matrices at loraplus_lr_ratio x the learning rate), else the trainer's own."""
    if not cfg.loraplus_lr_ratio:
        return (None, None)
    optimizer = create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=cfg.learning_rate,
                                          loraplus_lr_ratio=cfg.loraplus_lr_ratio)
    return (optimizer, None)


def trainable_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total}


def trainer_kwargs(cfg: TrainSection, out: Path, precision: Precision | None = None) -> dict:
    """Arguments shared by every stage's TRL config, from the recipe's training keys and the device and precision
    policy (engine/models/device.py); scratch goes to out/_trainer."""
    return dict(
        output_dir=str(out / "_trainer"), report_to=cfg.report_to, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        gradient_checkpointing=cfg.gradient_checkpointing, use_liger_kernel=cfg.enable_liger_kernel,
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=True, **mixed_precision(precision or Precision()),
    )


TENSORBOARD_DIR, MLFLOW_DB = "tensorboard", "mlflow.db"  # inside the stage's artifact


@contextlib.contextmanager
def tracking(cfg: TrainSection, out: Path, stage: str):
    """TensorBoard event files in out/tensorboard, or one MLflow run (named after the stage, experiment "tuneline")
    in a local SQLite file out/mlflow.db, no server (MLflow 3 retired the plain-folder store). The run is opened
    here so that evaluations before and after training land in it too; transformers' callbacks log into it."""
    if cfg.report_to == "tensorboard":
        with environment({"TENSORBOARD_LOGGING_DIR": str(out / TENSORBOARD_DIR)}):
            yield
    elif cfg.report_to == "mlflow":
        import mlflow
        previous = mlflow.get_tracking_uri()
        with environment({"MLFLOW_TRACKING_URI": mlflow_uri(out), "MLFLOW_EXPERIMENT_NAME": "tuneline"}):
            mlflow.set_tracking_uri(mlflow_uri(out))
            mlflow.set_experiment("tuneline")
            try:
                with mlflow.start_run(run_name=stage):
                    yield
            finally:
                mlflow.set_tracking_uri(previous)
    else:
        yield


@contextlib.contextmanager
def environment(settings: dict[str, str]):
    """Environment variables set for the block, then restored: trackers' callbacks read them at setup."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def mlflow_uri(artifact: Path) -> str:
    """Where a stage's MLflow run is: `mlflow ui --backend-store-uri <this>` shows it."""
    return f"sqlite:///{(artifact / MLFLOW_DB).resolve()}"


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes the artifact and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def save_model(model, tokenizer, target: Path) -> Path:
    """Weights (safetensors) and tokenizer to `target`, by rank 0 only."""
    if is_main_process():
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    return target


def save_trained(model, tokenizer, cfg: TrainSection, out: Path) -> Path:
    """An adapter to out/adapter, or full weights to out/model; returns where."""
    return save_model(model, tokenizer, out / (ADAPTER_DIR if is_adapter(cfg) else FULL_DIR))



def loss_curve(trainer) -> list[dict]:
    return [{"step": h["step"], "loss": round(h["loss"], 4)} for h in trainer.state.log_history if "loss" in h]


def finish(trainer, out: Path, cfg: TrainSection, resumed_from: int | None = None) -> dict:
    """Run summary shared by all stages; removes the trainer's scratch directory (checkpoints included: the
    finished stage is the artifact)."""
    if is_main_process():
        shutil.rmtree(out / "_trainer", ignore_errors=True)
    peak = {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)} if torch.cuda.is_available() else {}
    return {**peak, "processes": int(os.environ.get("WORLD_SIZE", "1")), "steps": trainer.state.global_step,
            "resumed_from_step": resumed_from, "loss_curve": loss_curve(trainer),
            "device": device_type(), "finetuning_type": cfg.finetuning_type,
            "report_to": cfg.report_to, **trainable_parameters(trainer.model)}


def without_row_ids(dataset):
    return dataset.remove_columns([c for c in ("row_id",) if c in dataset.column_names])
