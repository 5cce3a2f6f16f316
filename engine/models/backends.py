"""Which engine runs inference, one decision for serving and evaluation: vLLM where its package is importable and
a CUDA GPU is present, else transformers. Kept apart from serve.py so that evaluation's code version does not
follow the server's."""

from __future__ import annotations

import dataclasses
import importlib.util

import torch

from engine.errors import RecipeError, ServeError
from engine.models.device import Device, check_device


def vllm_usable(on: Device | None = None) -> bool:
    """vLLM's package is importable (a pod's image holds the orchestrator's versions) and `on` (default: here) is a
    CUDA GPU."""
    gpu = on.type == "cuda" if on is not None else torch.cuda.is_available()
    return importlib.util.find_spec("vllm") is not None and gpu


def choose_backend(preference: str, key: str = "serve.infer_backend", error: type[Exception] = ServeError,
                   on: Device | None = None) -> str:
    """"vllm" or "huggingface" for a recipe's infer_backend (`key`, auto | vllm | huggingface) on `on` (default:
    here); asking for vLLM where it cannot run raises `error`, one line naming the key and what is missing."""
    if preference == "vllm" and not vllm_usable(on):
        gpu = on.type == "cuda" if on is not None else torch.cuda.is_available()
        raise error(f"{key} is vllm, but vLLM needs its package and a CUDA GPU "
                    f"(vllm importable: {importlib.util.find_spec('vllm') is not None}, "
                    f"GPU: {gpu}); set it to auto or huggingface")
    if preference == "auto":
        return "vllm" if vllm_usable(on) else "huggingface"
    return preference


def pod_expectation(on: Device) -> dict:
    """What a pod must find at its start where its fingerprint records the declared device `on`: that device, and
    vLLM importable as it is here (an `auto` backend was resolved on it: the image holds the orchestrator's
    versions)."""
    return {**dataclasses.asdict(on), "vllm": importlib.util.find_spec("vllm") is not None}


def check_pod(expected: dict) -> None:
    """At a pod's start: the hardware and vLLM its fingerprint assumed (pod_expectation), or one line saying
    which differs."""
    check_device(expected)
    found = importlib.util.find_spec("vllm") is not None
    if found != expected["vllm"]:
        raise RecipeError(f"launcher.kubernetes.image: vLLM is {'' if found else 'not '}importable in this pod but "
                          f"{'' if expected['vllm'] else 'not '}on the orchestrator, which planned this stage with "
                          "it; build the image with the orchestrator's versions")
