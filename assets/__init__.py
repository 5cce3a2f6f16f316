"""Dagster assets: one thin module per stage, each calling one engine function.

Whatever imports them (the `tuneline` CLI, `dagster dev`'s code location) imports llm-compressor through
assets/quantized_models.py, which logs "No accelerator available! Compressing model on CPU instead" three times
per import on a CPU machine: its log level is ERROR unless LLM_COMPRESSOR_LOG_LEVEL says otherwise."""

import os

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
