"""A stage process runs only a training (or pod-capable export/evaluation) stage's entry point from the fixed table,
whatever its spec.json says."""

import json
import sys

import pytest

from engine.graph import STAGES
from engine.train.child import main, spec_of
from engine.train.entries import POD_ENTRIES, TRAINING_ENTRIES, entry_name


def test_the_table_is_what_the_graph_declares_for_every_training_stage():
    assert TRAINING_ENTRIES == {s.name: entry_name(s.entry) for s in STAGES if s.training}


def test_the_pod_table_is_what_the_graph_declares_for_every_stage_that_may_run_as_a_pod():
    assert POD_ENTRIES == {s.name: entry_name(s.entry) for s in STAGES if s.remote}
    assert {s.remote for s in STAGES if s.remote} == {"export", "evaluation"}


PLANTED = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\ndef run(run):\n    return {{}}\n"


@pytest.mark.parametrize("spec", [
    {"stage": "planted_stage"},  # not a stage at all
    {"stage": "raw_data"},  # a stage, not a training one nor one a pod may run
    {"stage": "sft_adapter", "entry": "planted_module:run"},  # an old-style spec naming a module
    {"stage": "planted_module:run"},
], ids=["unknown", "not-training", "entry-key", "module-as-stage"])
def test_a_spec_naming_anything_but_a_training_stage_is_refused_in_one_line(spec, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported.txt"
    (tmp_path / "planted_module.py").write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "home" / "artifacts" / "sft_adapter" / ".run-x"
    run_dir.mkdir(parents=True)
    path = run_dir / "spec.json"
    path.write_text(json.dumps({**spec, "fingerprint": "x", "keys": [], "recipe": {}, "inputs": {},
                                "out": str(tmp_path / "out"), "home": str(tmp_path / "home")}))
    assert main(["--spec", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err, err
    assert ("is not a stage a stage process runs" in err) or ("names an entry point" in err), err
    assert not marker.exists() and "planted_module" not in sys.modules
    assert json.loads((run_dir / "error.json").read_text())["kind"] == "error"


def test_a_spec_is_written_with_the_stage_and_no_module():
    import engine.train.sft
    from engine.recipe import load_recipe
    spec = spec_of("sft_adapter", "fp", engine.train.sft.train_sft_adapter, ("sft",), load_recipe("tiny")[0], {},
                   "/o", "/h")
    assert spec["stage"] == "sft_adapter" and "entry" not in spec
    assert not any("engine.train" in str(v) for v in spec.values())
    from engine.errors import TunelineError
    with pytest.raises(TunelineError, match="reward_model: its entry point engine.train.sft:train_sft_adapter"):
        spec_of("reward_model", "fp", engine.train.sft.train_sft_adapter, ("sft",), load_recipe("tiny")[0], {}, "/o", "/h")
