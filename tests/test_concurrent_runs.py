"""Two runs with different recipes at once on one artifact root: each gets its own lineage end to end, and
the stages they share are built once (the second run waits on the fingerprint's lock and reuses it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import stop_process_group

pytestmark = pytest.mark.slow
# lineage is what this test is about, not the gates: on 16 questions one answer is 0.0625 of accuracy, more than
# quantize.max_accuracy_drop's default, so the gates are opened
SMALL = ["--set", "sft.num_train_epochs=1", "--set", "evaluation.max_samples=16",
         "--set", "quantize.calibration_samples=16", "--set", "dpo.min_reward_gain=-100",
         "--set", "quantize.max_accuracy_drop=1.0"]
SFT_DOWNSTREAM = {"sft_adapter", "dpo_adapter", "merged_model", "gptq_model", "awq_model", "eval_sft", "eval_dpo",
                  "eval_merged", "eval_gptq", "eval_awq", "model_comparison", "deployment"}


def cli(*args: str, root: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args, "--artifact-root", str(root), *SMALL]


def plan(root: Path, learning_rate: str) -> dict[str, dict]:
    out = subprocess.run(cli("plan", "--json", "--set", f"sft.learning_rate={learning_rate}", root=root),
                         capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    return {row["stage"]: row for row in json.loads(out.stdout)}


def test_two_recipes_at_once_each_get_their_own_lineage(tmp_path):
    root = tmp_path / "home"
    # one thread each: two runs share the 2 cores instead of oversubscribing them
    env = os.environ | {"PYTHONPATH": os.getcwd(), "DAGSTER_HOME": str(tmp_path / "dagster"), "OMP_NUM_THREADS": "1"}
    runs = {lr: subprocess.Popen(cli("run", "--set", f"sft.learning_rate={lr}", root=root), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for lr in ("3.0e-3", "2.0e-3")}
    try:
        outputs = {lr: run.communicate(timeout=1500)[0] for lr, run in runs.items()}
    finally:
        for run in runs.values():
            stop_process_group(run)
    for lr, run in runs.items():
        assert run.returncode == 0, outputs[lr][-3000:]
    plans = {lr: plan(root, lr) for lr in runs}
    for lr, stages in plans.items():
        for name, row in stages.items():
            assert row["built"], f"{name} of run {lr} is not built"
            manifest = json.loads((root / "artifacts" / name / row["fingerprint"] / "manifest.json").read_text())
            assert manifest["parents"] == row["parents"], f"{name} of run {lr} was made from another run's inputs"
        merged = json.loads((root / "artifacts" / "merged_model" / stages["merged_model"]["fingerprint"] /
                             "lineage.json").read_text())
        assert merged["artifacts"]["sft_adapter"]["fingerprint"] == stages["sft_adapter"]["fingerprint"]
        assert merged["artifacts"]["sft_adapter"]["config"]["sft"]["learning_rate"] == float(lr)
        serve = json.loads((root / "artifacts" / "deployment" / stages["deployment"]["fingerprint"] /
                            "serve.json").read_text())
        assert serve["model_path"] == str(root / "artifacts" / "awq_model" / stages["awq_model"]["fingerprint"])
    first, second = plans.values()
    differ = {name for name in first if first[name]["fingerprint"] != second[name]["fingerprint"]}
    assert differ == SFT_DOWNSTREAM
    for name in set(first) - differ:  # shared: built by one run, waited for and reused by the other
        assert len(list((root / "artifacts" / name).glob("*/manifest.json"))) == 1, name
    assert not list((root / "artifacts").glob("*/.work-*"))
