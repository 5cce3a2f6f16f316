"""A bad recipe, data file or model path stops `tuneline run` before any work, naming what is wrong."""

import pytest

from pipelines.cli import main


def run_cli(tmp_path, recipe_text: str, capsys) -> tuple[int, str]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    code = main(["run", "--recipe", str(recipe), "--artifact-root", str(tmp_path / "root")])
    return code, capsys.readouterr().err


def test_mistyped_key(tmp_path, capsys):
    code, err = run_cli(tmp_path, "sft:\n  learning_rat: 1e-4\n", capsys)
    assert code == 2 and "sft.learning_rat: unknown key; did you mean 'sft.learning_rate'?" in err
    assert not (tmp_path / "root").exists()


def test_missing_data_file(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datasets.yaml").write_text("mine:\n  file_name: mine.jsonl\n")
    code, err = run_cli(tmp_path, f"data:\n  dataset_dir: {tmp_path / 'data'}\n", capsys)
    assert code == 2 and f"{tmp_path / 'data' / 'mine.jsonl'} does not exist" in err
    assert not (tmp_path / "root").exists()


def test_model_path_that_does_not_exist(tmp_path, capsys):
    code, err = run_cli(tmp_path, f"model:\n  model_name_or_path: {tmp_path / 'no-model'}\n", capsys)
    assert code == 2 and f"model.model_name_or_path: {tmp_path / 'no-model'} is not a directory" in err
    assert not (tmp_path / "root").exists()


def test_bad_override(tmp_path, capsys):
    assert main(["run", "--set", "sft.lora_rank", "--artifact-root", str(tmp_path / "root")]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_lineage_of_an_unknown_fingerprint_says_so(tmp_path, capsys):
    from engine.build import build_stage
    from engine.store.home import Home
    from engine.plan import make_plan
    from engine.recipe import load_recipe
    from engine.stage import Stage
    recipe = load_recipe("tiny")[0]
    stage = Stage("raw_data", entry=lambda run: {"rows": 0})
    known = build_stage(Home(tmp_path), make_plan([stage], recipe), "raw_data", recipe)
    assert main(["lineage", "0123456789", "--artifact-root", str(tmp_path)]) == 2
    assert "'0123456789' is not a known artifact in the catalog" in capsys.readouterr().err
    assert main(["lineage", known.fingerprint[:6], "--artifact-root", str(tmp_path)]) == 0
    assert f"raw_data {known.fingerprint}" in capsys.readouterr().out


def test_lineage_without_artifacts_says_how_to_get_them(tmp_path, capsys):
    assert main(["lineage", "abc", "--artifact-root", str(tmp_path)]) == 2
    assert "no artifacts under" in capsys.readouterr().err


def test_a_selection_whose_upstream_is_not_built_stops_before_any_work(tmp_path, capsys):
    assert main(["run", "--select", "sft_adapter", "--artifact-root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err
    assert "sft_adapter needs" in err and "not built for this recipe; select '*sft_adapter'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "root" / "artifacts").exists()


def test_an_invalid_selection_is_named(tmp_path, capsys):
    assert main(["run", "--select", "sft_adapter nonsense", "--artifact-root", str(tmp_path / "root")]) == 2
    assert "--select 'sft_adapter nonsense'" in capsys.readouterr().err


# Every error a user can cause, through the CLI: one line on stderr naming the key, path or asset and what was
# expected, exit 2, no traceback (--verbose shows one). Each case: (files to write, argv, a fragment of the line).
REGISTRY = '{{"mine": {{"file_name": "mine.jsonl", "columns": {{"prompt": "question", "response": "output"}}}}}}'
CASES = {
    "duplicate key": ({"r.yaml": "sft:\n  learning_rate: 1e-3\n  learning_rate: 2e-3\n"},
                      ["run", "--recipe", "{tmp}/r.yaml"], "key 'learning_rate' appears twice, at line 2 and line 3"),
    "not UTF-8": ({"r.yaml": b"sft:\n  learning_rate: \xff\n"}, ["run", "--recipe", "{tmp}/r.yaml"],
                  "is not UTF-8 text"),
    "infinite number": ({"r.yaml": "sft:\n  learning_rate: .inf\n"}, ["run", "--recipe", "{tmp}/r.yaml"],
                        "sft.learning_rate: Input should be a finite number"),
    "boolean for an integer": ({"r.yaml": "sft:\n  lora_rank: true\n"}, ["run", "--recipe", "{tmp}/r.yaml"],
                               "sft.lora_rank: Input should be a valid integer"),
    "unknown scheduler": ({"r.yaml": "sft:\n  lr_scheduler_type: bogus\n"}, ["run", "--recipe", "{tmp}/r.yaml"],
                          "sft.lr_scheduler_type: expected one of transformers' schedulers"),
    "broken YAML": ({"r.yaml": "sft: [1, 2\n"}, ["run", "--recipe", "{tmp}/r.yaml"], "r.yaml is not valid YAML: line 2"),
    "missing recipe": ({}, ["run", "--recipe", "{tmp}/nope.yaml"], "nope.yaml does not exist (expected a YAML recipe)"),
    "bad --set value": ({}, ["run", "--set", "sft.learning_rate=abc"],
                        "sft.learning_rate: Input should be a valid number"),
    "--set without a value": ({}, ["run", "--set", "sft.lora_rank"], "expected KEY=VALUE"),
    "bad cron": ({}, ["run", "--set", "schedule.cron=not a cron"],
                 "schedule.cron 'not a cron': expected a 5-field cron"),
    "unknown lora_target": ({}, ["run", "--set", "dpo.lora_target=q_proj,zz_proj"],
                            "dpo.lora_target: zz_proj is not a module of the model (its linear layers: down_proj"),
    "column the file lacks": ({"data/dataset_info.json": REGISTRY,
                               "data/mine.jsonl": '{{"instruction": "a", "output": "b"}}\n',
                               "r.yaml": "data:\n  dataset_dir: {tmp}/data\n  dataset: [mine]\n"},
                              ["run", "--recipe", "{tmp}/r.yaml"],
                              "dataset 'mine': columns.prompt is 'question', but mine.jsonl has no such column"),
    "unparsable data file": ({"data/dataset_info.json": '{{"bad": {{"file_name": "bad.json"}}}}',
                              "data/bad.json": '[{{"instruction": "a", "output": "b"}},, {{',
                              "r.yaml": "data:\n  dataset_dir: {tmp}/data\n  dataset: [bad]\n"},
                             ["run", "--recipe", "{tmp}/r.yaml", "--select", "raw_data"],
                             "raw_data: {tmp}/data/bad.json: not a readable JSON document (it ends at line 1 column 41"),
    "artifact root under a file": ({"file": "x"}, ["run", "--artifact-root", "{tmp}/file/root"], "{tmp}/file/"),
    "unbuilt upstream": ({}, ["run", "--select", "sft_adapter"], "not built for this recipe; select '*sft_adapter'"),
    "unknown artifact": ({}, ["chat", "nothing", "--prompt", "hi"], "'nothing' is neither a model directory nor"),
    "missing LLaMA-Factory YAML": ({}, ["import-llamafactory", "{tmp}/nope.yaml"], "nope.yaml does not exist"),
    "missing spec": ({}, ["train", "sft_adapter", "--spec", "{tmp}/nope.json"], "nope.json: no such file"),
    "data not built": ({}, ["data", "show", "clean_data"], "(what recipe 'tiny' implies) is not built under"),
    "no rows asked": ({}, ["data", "show", "raw_data", "--rows", "0"], "--rows 0: expected a count of 1 or more"),
    "unknown export": ({}, ["export", "nothing", "{tmp}/out"], "'nothing': neither an asset (sft_adapter, dpo_adapter"),
    "push offline": ({}, ["export", "merged_model", "{tmp}/out", "--push-to-hub", "me/m"], "HF_HUB_OFFLINE is set"),
}


def write_case(tmp_path, files: dict) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.format(tmp=tmp_path))


@pytest.mark.parametrize("case", list(CASES))
def test_each_user_error_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capfd):
    files, argv, fragment = CASES[case]
    write_case(tmp_path, files)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "root"))
    code = main([arg.format(tmp=tmp_path) for arg in argv])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("tuneline: ") and fragment.format(tmp=tmp_path) in lines[0], lines[0]


def test_verbose_adds_the_traceback(tmp_path, monkeypatch, capfd):
    files, argv, fragment = CASES["duplicate key"]
    write_case(tmp_path, files)
    assert main([*(arg.format(tmp=tmp_path) for arg in argv), "--artifact-root", str(tmp_path / "root"),
                 "--verbose"]) == 2
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].endswith(
        "a key may be set once")


def test_a_failed_check_says_its_source_value_and_bound_in_one_line(tmp_path, monkeypatch, capfd):
    """A blocking check that fails stops the run with exit 2 and one line carrying the check's detail (Dagster's own
    message names only the check)."""
    import re
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    code = main(["run", "--select", "raw_data,clean_data", "--set", "clean.max_source_loss_ratio=0.01",
                 "--artifact-root", str(tmp_path / "root")])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert re.match(r"tuneline: clean_data: check every_source_within_loss_bound failed: alpaca_tasks: lost "
                    r"\d+\.\d% \(\d+ in, \d+ out\), bound 1\.0%, over by \d+\.\d%", err[0]), err[0]
