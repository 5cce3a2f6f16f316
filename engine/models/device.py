"""One device and precision policy for every model load: training, evaluation, reward scoring, merge,
quantization, chat and serving. One policy, one place.

Device: CUDA when present, else the CPU; batches go to the model's device. Dtype: the recipe's `model` section
holds LLaMA-Factory's keys (`bf16`, `fp16`, `pure_bf16`, `infer_dtype`), and they decide when given:

| recipe (model.*)         | CPU                                | GPU with bf16                    | GPU without bf16   |
|--------------------------|------------------------------------|----------------------------------|--------------------|
| none set (default)       | float32, bf16 AMP if native bf16 * | bfloat16 frozen weights, bf16 AMP | float16, fp16 AMP |
| bf16: true               | bfloat16 frozen weights, bf16 AMP  | bfloat16, bf16 AMP               | refused at load    |
| fp16: true               | refused at load                    | float16, fp16 AMP                | float16, fp16 AMP  |
| pure_bf16: true          | bfloat16 weights, trainable too, no AMP (unless bf16 too) | same          | refused at load    |
| infer_dtype: X (not auto)| inference loads in X; training unaffected; the merge writes X | same       | bfloat16 refused   |

* a CPU with AVX512-BF16 or AMX (bf16 matmuls 2-3x float32's speed) trains under bf16 autocast, as TRL's own
default does; its weights and every inference stay float32. `bf16: false` turns it off.

The device is where a stage runs: this machine as torch sees it, or, for a stage that runs as a pod, the accelerator
the recipe declares (launcher.kubernetes.accelerator: type, count, bf16). The checks of GPU-only keys and the
fingerprint's precision identity consult that device (Device, stage_device), so a CPU orchestrator plans and checks
an H100 pod's stage as the H100 runs it; the pod checks at its start that it has the declared hardware (check_device).

Trainable parameters (LoRA/DoRA weights, the layers full or freeze fine-tuning trains) are upcast to float32
unless pure_bf16, as LLaMA-Factory's init_adapter does. The merge writes the base checkpoint's dtype unless
infer_dtype names one (LLaMA-Factory's export: explicit infer_dtype wins).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from engine.errors import RecipeError

# the recipe keys every stage that loads a model reads (its fingerprint covers them)
PRECISION_KEYS = ("model.bf16", "model.fp16", "model.pure_bf16", "model.infer_dtype")
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """The recipe's precision keys: what a stage passes down instead of the whole recipe."""
    bf16: bool | None = None  # None: the device decides
    fp16: bool = False
    pure_bf16: bool = False
    infer_dtype: str = "auto"  # auto | bfloat16 | float16 | float32

    @classmethod
    def of(cls, model_section: Any) -> "Precision":
        """From the recipe's `model` section (or a stage's view of it: reads exactly PRECISION_KEYS)."""
        return cls(bf16=model_section.bf16, fp16=model_section.fp16, pure_bf16=model_section.pure_bf16,
                   infer_dtype=model_section.infer_dtype)

    @property
    def asks(self) -> bool:
        """Whether any training precision key is set (else the device decides)."""
        return bool(self.bf16) or self.fp16 or self.pure_bf16


def device() -> torch.device:
    """CUDA when present (this process's GPU under torchrun/accelerate: LOCAL_RANK, as LLaMA-Factory's
    get_current_device), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_type() -> str:
    return device().type


@dataclass(frozen=True)
class Device:
    """The device a stage runs on, as the policy needs to know it: this machine (here()) or the accelerator a recipe
    declares for its pods (declared())."""
    type: str  # "cuda" or "cpu"
    bf16: bool  # a GPU: it computes bfloat16 (Ampere on); a CPU: it computes bf16 natively (AVX512-BF16, AMX)
    accelerator: str | None = None  # the declared GPU type (nvidia-h100-80gb); None: this machine, or a CPU pod
    declared: bool = False  # a pod's declared hardware, not this machine's

    def describe(self) -> str:
        if self.declared:
            return (f"the declared accelerator {self.accelerator} (launcher.kubernetes.accelerator)"
                    if self.accelerator else "the declared CPU pods (launcher.kubernetes.accelerator.count 0)")
        if self.type == "cuda":
            return f"this GPU ({torch.cuda.get_device_name()})"
        return "this machine's CPU"


def here() -> Device:
    """This process's device, as torch sees it."""
    cuda = device_type() == "cuda"
    return Device("cuda" if cuda else "cpu", torch.cuda.is_bf16_supported() if cuda else cpu_native_bf16())


def declared(accelerator: Any) -> Device:
    """The device of a pod with the declared `accelerator` (launcher.kubernetes.accelerator); count 0: a CPU."""
    if not accelerator.count:
        return Device("cpu", accelerator.bf16, declared=True)
    return Device("cuda", accelerator.bf16, accelerator.type, declared=True)


def stage_device(launcher: Any, kind: str) -> Device:
    """Where a stage of `kind` (training, export, evaluation, deployment) runs under the recipe's launcher: the
    declared accelerator for a stage that runs as a pod, else this machine (no accelerator declared: this machine's
    view, as before one could be declared)."""
    accelerator = launcher.kubernetes.accelerator
    if accelerator is not None and launcher.runs_in_pod(kind):
        return declared(accelerator)
    return here()


def check_device(expected: dict) -> None:
    """A pod's start: its hardware must be the declared one (a Device as a dict), or what its fingerprint records
    is not what it ran on; one line naming the key and both."""
    found = here()
    if found.type != expected["type"] or found.bf16 != expected["bf16"]:
        have = (f"a GPU ({torch.cuda.get_device_name()}, bf16 {found.bf16})" if found.type == "cuda"
                else f"no GPU (a CPU, native bf16 {found.bf16})")
        raise RecipeError(f"launcher.kubernetes.accelerator declares {expected['accelerator'] or 'CPU pods'} "
                          f"(bf16 {expected['bf16']}), but this pod has {have}; fix the declaration or the pods' "
                          "placement (accelerator.label)")


@dataclass(frozen=True)
class TrainingKernels:
    """How a training step attends and scores on a device (the device policy's speed levers, not recipe keys)."""
    row_attention: bool  # a padding-free batch attended row by row (engine/models/attention.py) for `sdpa`
    labelled_lm_head: bool  # TRL's fused LM head projects only labelled positions where TRL would not (lm_head.py)


def training_kernels(on: torch.device | None = None) -> TrainingKernels:
    """What trains fastest on `on` (default: this process's device). On a CPU, tuneline's row attention and the
    labelled-only LM head (measured by bench/train_throughput.py). On a GPU, what stock TRL at its best runs:
    transformers' own attention over the flattened batch (one kernel call; rows kept apart by position ids) and
    TRL's own LM head (which projects only labelled positions there already): on an H200 the row attention's
    per-group gathers and calls made SFT 0.41x TRL at its best."""
    cpu = (on if on is not None else device()).type == "cpu"
    return TrainingKernels(row_attention=cpu, labelled_lm_head=cpu)


def bf16_supported(on: Device | None = None) -> bool:
    """bfloat16 compute on `on` (default: here): every CPU torch runs it; a GPU only from Ampere on."""
    if on is not None:
        return on.type == "cpu" or on.bf16
    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True


def cpu_native_bf16() -> bool:
    """The CPU computes bf16 in hardware (AVX512-BF16 or AMX): there bf16 matmuls run 2-3x float32's speed."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def device_default(on: Device | None = None) -> torch.dtype:
    """The dtype when the recipe names none: float32 on a CPU; on a GPU bfloat16 where supported, else float16.
    (LLaMA-Factory's infer_optim_dtype picks float16 for a float32 checkpoint even on a bf16 GPU; we take bfloat16
    there: float32's range, so nothing overflows.)"""
    on = on or here()
    if on.type == "cpu":
        return torch.float32
    return torch.bfloat16 if on.bf16 else torch.float16


def train_dtype(p: Precision, on: Device | None = None) -> torch.dtype:
    """The dtype a training stage loads its (frozen) weights in: bf16/pure_bf16, fp16, else the device's default
    (LLaMA-Factory's compute_dtype: infer_dtype is not read for a trainable model)."""
    if p.bf16 or p.pure_bf16:
        return torch.bfloat16
    if p.fp16:
        return torch.float16
    return device_default(on)


def infer_dtype(p: Precision, on: Device | None = None) -> torch.dtype:
    """The dtype inference loads use (evaluation, reward scoring, merge, quantization, chat, serving): an explicit
    infer_dtype wins, else what training uses. (LLaMA-Factory's training flags win over infer_dtype inside a
    training run; one recipe carries both here, and a key set for inference should act on inference.)"""
    if p.infer_dtype != "auto":
        return getattr(torch, p.infer_dtype)
    return train_dtype(p, on)


def upcast_trainable(p: Precision) -> bool:
    """Trainable parameters in float32 unless pure_bf16 (LLaMA-Factory's cast_trainable_params_to_fp32)."""
    return not p.pure_bf16


def mixed_precision(p: Precision, on: Device | None = None) -> dict:
    """TrainingArguments' device and autocast flags: bf16/fp16 AMP as the recipe asks; with no key set, AMP in the
    device default's half dtype on a GPU, bf16 AMP on a CPU that computes bf16 natively (TRL's default; float32
    weights), else none; pure_bf16 alone trains without AMP; bf16: false turns the CPU's default off.
    (LLaMA-Factory trains without AMP unless told; its example configs all set bf16: true on a GPU, as we do.)"""
    on = on or here()
    cpu = on.type == "cpu"
    if cpu:
        default = torch.bfloat16 if p.bf16 is None and not p.asks and on.bf16 else None
    else:
        default = None if p.asks else device_default(on)
    return {"use_cpu": cpu, "bf16": bool(p.bf16) or default == torch.bfloat16,
            "fp16": p.fp16 or default == torch.float16}


def name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: how metrics, fingerprints and command lines spell a dtype."""
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The dtype a checkpoint's config.json declares (`dtype`, or the older `torch_dtype`); float32 if none."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    declared = config.get("dtype") or config.get("torch_dtype")
    dtype = getattr(torch, declared, None) if isinstance(declared, str) else None
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def export_dtype(p: Precision, base_dir: Path) -> torch.dtype:
    """The dtype the merge writes: an explicit infer_dtype, else the base checkpoint's own. (LLaMA-Factory's
    export turns a float32 checkpoint into half precision on a GPU; we keep it: the merge changes no precision
    the user did not ask for.)"""
    return getattr(torch, p.infer_dtype) if p.infer_dtype != "auto" else checkpoint_dtype(base_dir)


def load_kwargs(dtype: torch.dtype) -> dict:
    """from_pretrained arguments that put a model on the policy's device in `dtype`."""
    return {"dtype": dtype, **({"device_map": {"": device()}} if device_type() == "cuda" else {})}


def spread_kwargs(dtype: torch.dtype) -> dict:
    """from_pretrained arguments for a merge, quantization check or evaluation load, which must fit a box that holds
    the weights once: on GPUs accelerate places the layers over every visible GPU, then CPU RAM (device_map="auto"),
    all in `dtype` (offloaded layers stay in the recipe's dtype: bfloat16 by default on a GPU);
    on a CPU-only machine the CPU, as load_kwargs. Training loads stay on their rank's GPU (load_kwargs)."""
    return {"dtype": dtype, **({"device_map": "auto"} if device_type() == "cuda" else {})}


def release() -> None:
    """Give back the memory of the models the caller has just dropped (its last reference gone): reference cycles
    collected now, not at the next automatic collection, and CUDA's cached blocks returned, so that the next model
    loaded finds the room."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def visible_gpus() -> int:
    """The GPUs this process sees (CUDA_VISIBLE_DEVICES): vLLM's tensor_parallel_size unless the recipe sets one."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def tensor_parallel_size(asked: int | None) -> int:
    """vLLM's tensor_parallel_size: the recipe's (serve./evaluation.tensor_parallel_size), else every visible GPU
    (at least 1)."""
    return asked or max(1, visible_gpus())


def to_device(batch: dict, model) -> dict:
    """A batch of tensors on the model's device."""
    return {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def mixed_autocast(model):
    """Autocast in the model's half dtype when its weights mix dtypes (a half-precision base under float32 trainable
    layers or score head, as training leaves it), as the trainer's own evaluation runs; else nothing."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    half = [d for d in HALF if d in dtypes]
    if len(dtypes) < 2 or not half:
        return contextlib.nullcontext()
    return torch.autocast(model.device.type, dtype=half[0])


def upcast_trainable_parameters(model) -> None:
    """Every trainable half-precision parameter to float32 (frozen weights stay as loaded)."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in HALF:
            parameter.data = parameter.data.float()


def check_precision(model_section: Any, on: Device | None = None) -> None:
    """A request the hardware (`on`, default here) cannot honour is refused before any work, naming the key."""
    on = on or here()
    p = Precision.of(model_section)
    if on.type == "cpu" and (p.fp16 or p.infer_dtype == "float16"):
        key = "model.fp16: true" if p.fp16 else "model.infer_dtype: float16"
        where = f"; {on.describe()} have none" if on.declared else ""
        raise RecipeError(f"{key} asks for float16, which needs a CUDA GPU (transformers refuses fp16 on a CPU"
                          f"{where}); use model.bf16: true (bfloat16 runs on a CPU), or leave it out for float32")
    # LLaMA-Factory refuses pure_bf16 without a bf16 GPU; a CPU computes bf16 for real, so bf16 and pure_bf16 run there
    if not bf16_supported(on):
        for key, asked in (("model.bf16: true", p.bf16), ("model.pure_bf16: true", p.pure_bf16),
                           ("model.infer_dtype: bfloat16", p.infer_dtype == "bfloat16")):
            if asked:
                raise RecipeError(f"{key} asks for bfloat16, which {on.describe()} does not support (Ampere or "
                                  "newer does); use model.fp16: true instead")


def precision_identity(model_section: Any, on: Device | None = None) -> dict:
    """What a model-loading stage's fingerprint adds: the device type (and a declared accelerator's type) and the
    dtypes the policy resolves to on the device the stage runs on (`on`, default here), so that an artifact made on
    a CPU is not reused on a GPU (or in another dtype)."""
    on = on or here()
    p = Precision.of(model_section)
    identity = {"device": on.type, "train_dtype": name(train_dtype(p, on)), "infer_dtype": name(infer_dtype(p, on)),
                "pure_bf16": p.pure_bf16,
                "amp": {k: v for k, v in mixed_precision(p, on).items() if k != "use_cpu"}}
    return {**identity, "accelerator": on.accelerator} if on.accelerator else identity


def with_precision(outside: Callable[[Any, Any], dict] | None = None,
                   kind: str | None = None) -> Callable[[Any, Any], dict]:
    """A Stage's `outside` that adds the precision identity to what `outside` (if any) returns: on the device a
    stage of `kind` runs on (stage_device; it reads the launcher section, which the stage locates), else here."""
    def identity(recipe, hasher) -> dict:
        on = stage_device(recipe.launcher, kind) if kind else None
        return {**(outside(recipe, hasher) if outside else {}), "precision": precision_identity(recipe.model, on)}
    return identity


def precision_metrics(dtype: torch.dtype, **more: Any) -> dict:
    """`device` and `dtype` for a stage's metrics (the manifest and Dagster metadata)."""
    return {"device": device_type(), "dtype": name(dtype), **more}
