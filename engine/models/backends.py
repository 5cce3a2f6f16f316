"""Which engine runs inference, one decision for serving and evaluation: vLLM where its package is importable and
a CUDA GPU is present, else transformers. Kept apart from serve.py so that evaluation's code version does not
follow the server's."""

from __future__ import annotations

import importlib.util

import torch

from engine.errors import ServeError


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def choose_backend(preference: str, key: str = "serve.infer_backend", error: type[Exception] = ServeError) -> str:
    """"vllm" or "huggingface" for a recipe's infer_backend (`key`, auto | vllm | huggingface); asking for vLLM where
    it cannot run raises `error`, one line naming the key and what is missing."""
    if preference == "vllm" and not vllm_usable():
        raise error(f"{key} is vllm, but vLLM needs its package and a CUDA GPU "
                    f"(vllm importable: {importlib.util.find_spec('vllm') is not None}, "
                    f"GPU: {torch.cuda.is_available()}); set it to auto or huggingface")
    if preference == "auto":
        return "vllm" if vllm_usable() else "huggingface"
    return preference
