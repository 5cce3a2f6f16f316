"""Secrets never land: the whole tiny graph, run by `tuneline run` with tokens in its environment, writes none of them
into any file under the artifact root (artifacts and exports, catalog, Dagster home with its run and event storage,
run folders, locks, tracker files) nor into its own output."""

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SECRETS = ("HF_TOKEN", "WANDB_API_KEY", "TUNELINE_API_KEY")


def forms(secret: str) -> dict[str, bytes]:
    """The secret as text, and as it reads anywhere inside base64 text (one form per alignment: the characters that
    do not depend on the bytes around it)."""
    found = {"text": secret.encode()}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret.encode()).decode().rstrip("=")
        lead = -(-shift * 4 // 3)  # characters touched by the padding bytes in front
        found[f"base64+{shift}"] = encoded[lead + 1:-2].encode()
    return found


def leaks(path: Path, needles: dict[str, bytes]) -> list[str]:
    """Where a secret occurs in a file: its bytes, and a Parquet file's values (its pages may be compressed)."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        data += str(pq.read_table(path).to_pylist()).encode()
    return [name for name, needle in needles.items() if needle in data]


def test_no_secret_lands_under_the_home_or_in_the_output(tmp_path):
    home = tmp_path / "home"
    markers = {name: f"{name.lower()}-marker-{uuid.uuid4().hex}" for name in SECRETS}
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}  # the Dagster home under the artifact root
    env.update(markers, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--recipe", "tiny", "--artifact-root", str(home),
         "--set", "sft.report_to=mlflow", "--set", "dpo.report_to=tensorboard", "--set", "reward.report_to=mlflow"],
        cwd=ROOT, env=env, capture_output=True, timeout=1800)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    needles = {f"{name} {form}": needle for name, secret in markers.items() for form, needle in forms(secret).items()}
    files = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 100 and any(p.name == "dagster.yaml" for p in files)
    assert any("mlflow" in p.name for p in files) and any("tfevents" in p.name for p in files)
    found = {str(p.relative_to(home)): hits for p in files if (hits := leaks(p, needles))}
    output = run.stdout + run.stderr
    found.update({"output": [name for name, needle in needles.items() if needle in output]} if
                 any(needle in output for needle in needles.values()) else {})
    assert found == {}


def test_the_base64_forms_find_a_secret_at_every_alignment():
    secret = "hf_token-marker-0123456789abcdef"
    for prefix in (b"", b"x", b"xy", b"xyz", b"{\"k\": \""):
        blob = base64.b64encode(prefix + secret.encode() + b"\"}")
        assert any(needle in blob for name, needle in forms(secret).items() if name != "text"), prefix
