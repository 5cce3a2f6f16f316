"""Quieting the libraries: their progress bars and notices drown the report a person reads."""

from __future__ import annotations

import logging
import os
import sys


def quiet_libraries() -> None:
    """Progress bars and beta notices from the libraries drown the report a person reads."""
    import warnings
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # its "No accelerator available" on every import
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # is_fx_tracing's notice, per export
    # a check of what the recipe turns off has no result on purpose (assets/stage_asset.py), and Dagster says so once
    # per downstream step: the report counts those checks as not configured instead
    logging.getLogger("dagster._core.execution.plan.active").addFilter(
        lambda record: "emitted no result" not in record.getMessage())
    progress_bars_off()


def progress_bars_off() -> None:
    """compressed-tensors and llm-compressor pass disable=False to tqdm themselves, so TQDM_DISABLE does not reach
    their bars: every tqdm made in this process is turned off instead (no library option does it)."""
    import tqdm
    if getattr(tqdm.tqdm.__init__, "tuneline_off", False):
        return
    original = tqdm.tqdm.__init__

    def off(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "disable": True})
    off.tuneline_off = True
    tqdm.tqdm.__init__ = off


def quiet_llmcompressor() -> None:
    """llm-compressor binds its log sink to stdout when imported: bind it to stderr, then silence it."""
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):
        import llmcompressor  # noqa: F401
    from loguru import logger
    for package in ("llmcompressor", "compressed_tensors"):
        logger.disable(package)
