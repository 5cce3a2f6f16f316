"""A bad recipe, data file or model path stops `tuneline run` before any work, naming what is wrong."""

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
    from engine.home import Home
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
