"""The device markers (tests/conftest.py): on a CUDA machine, simulated with TUNELINE_SIMULATE_GPU=1, every
`cpu_only` test is skipped with its reason rather than run; on a CPU machine every `gpu` test is skipped."""

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.processes import run


def files_marked(marker: str) -> list[str]:
    return sorted(str(p) for p in Path("tests").glob("test_*.py") if f"@pytest.mark.{marker}" in p.read_text())


def outcomes(tmp_path: Path, marker: str, simulate_gpu: str) -> dict[str, str]:
    """test id -> "skipped: <reason>" | "passed" | "failed" | "error", for the tests carrying `marker`."""
    report = tmp_path / f"{marker}.xml"
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, f"--junitxml={report}",
                  *files_marked(marker)], timeout=600, text=True,
                 env=os.environ | {"TUNELINE_SIMULATE_GPU": simulate_gpu, "PYTHONPATH": os.getcwd()})
    assert result.returncode in (0, 5) and report.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    found = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag: child for child in case}
        found[name] = (f"skipped: {tags['skipped'].get('message')}" if "skipped" in tags else
                       "failed" if "failure" in tags else "error" if "error" in tags else "passed")
    return found


def test_a_cuda_machine_skips_every_cpu_only_test_with_its_reason(tmp_path):
    found = outcomes(tmp_path, "cpu_only", "1")
    assert len(found) >= 13  # 13 functions in 5 files, 20 tests with their parameters
    run_anyway = {name: outcome for name, outcome in found.items()
                  if not outcome.startswith("skipped: CPU-only expectation on a CUDA machine: ")}
    assert run_anyway == {}


def test_a_cpu_machine_skips_every_gpu_test(tmp_path):
    found = outcomes(tmp_path, "gpu", "0")
    assert found and set(found.values()) == {"skipped: needs a CUDA GPU"}
