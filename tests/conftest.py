import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # recipes name data/ relative to the project, as `make run` does
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_recipe():
    from engine.recipe import load_recipe
    return load_recipe("tiny")[0]


@pytest.fixture(scope="session")
def sample_rows(tiny_recipe):
    """The tiny recipe's four sample datasets, ingested."""
    from engine.data.ingest import ingest
    from engine.data.registry import resolve_sources
    return ingest(resolve_sources("data", "datasets.yaml", tiny_recipe.data.dataset))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_recipe, sample_rows):
    from engine.models.base import message_texts
    from engine.models.load import make_tiny_model
    out = tmp_path_factory.mktemp("tiny")
    make_tiny_model(tiny_recipe.model.tiny, message_texts(sample_rows[0]), out)
    return out


@pytest.fixture(scope="session")
def formatted_dir(tmp_path_factory, tiny_model_dir, sample_rows):
    """A small formatted dataset (SFT, preference and KTO views) for training tests: 400 SFT rows, every
    preference pair and the labelled KTO sample."""
    from engine.data.format import format_rows
    from engine.data.ingest import ingest
    from engine.data.registry import resolve_sources
    from engine.models.load import load_tokenizer
    kto_rows = ingest(resolve_sources("data", "datasets.yaml", ["kto_tasks"]))[0]
    rows = [r for r in sample_rows[0] if r["kind"] == "sft"][:400]
    rows += [r for r in sample_rows[0] if r["kind"] == "preference"] + kto_rows
    out = tmp_path_factory.mktemp("formatted")
    format_rows(rows, load_tokenizer(tiny_model_dir), 128, 0.1, 42, out)
    return out


@pytest.fixture(scope="module")
def deployment_dir(tiny_model_dir, tmp_path_factory):
    """A deployment folder serving the tiny base model as `tiny-base` (what the serving tests start servers on)."""
    from engine.recipe import ServeSection
    from engine.serve.server import free_port, write_serve_config
    out = tmp_path_factory.mktemp("deployment")
    write_serve_config(tiny_model_dir, "tiny-base", ServeSection(port=free_port()), out)
    return out


SIMULATE_GPU = "TUNELINE_SIMULATE_GPU"  # 1: mark as a CUDA machine would, 0: as a CPU one (tests/test_markers.py)


def cuda_available() -> bool:
    """Whether the markers below treat this machine as a CUDA GPU one: torch's answer, unless simulated."""
    if os.environ.get(SIMULATE_GPU) in ("0", "1"):
        return os.environ[SIMULATE_GPU] == "1"
    import torch
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are skipped without CUDA; `cpu_only(reason)` tests, which expect what a CPU machine resolves
    (the CPU device, float32 defaults, float16 refused, vLLM absent), are skipped on a CUDA machine with the reason."""
    gpu = cuda_available()
    for item in items:
        if not gpu and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if gpu and (marker := item.get_closest_marker("cpu_only")):
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"CPU-only expectation on a CUDA machine: {reason}"))


@pytest.fixture(autouse=True)
def pools_alternate(monkeypatch):
    """A data stage's pool gives its spawned workers jobs only once they have started and by how busy they are
    (engine/runtime/pool.py): a test's few fast jobs would all run in the test's process, and "1 or N workers, the
    same bytes" would hold trivially. In tests a pool waits for its workers, then alternates jobs between this
    process and them by index: both paths run, whatever the timing."""
    from engine.runtime.pool import OrderedPool
    monkeypatch.setattr(OrderedPool, "alternate", True)
