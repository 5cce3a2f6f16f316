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
def sample_rows():
    from engine.data.ingest import ingest
    from engine.data.registry import resolve_sources
    return ingest(resolve_sources("data", "datasets.yaml", []))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_recipe, sample_rows):
    from engine.data.ingest import message_texts
    from engine.models import build_tiny
    out = tmp_path_factory.mktemp("tiny")
    build_tiny(tiny_recipe.model.tiny, message_texts(sample_rows[0]), out)
    return out
