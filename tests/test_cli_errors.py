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
    from engine.artifacts import ArtifactStore
    from engine.catalog import Catalog
    store, catalog = ArtifactStore(tmp_path / "artifacts"), Catalog(tmp_path / "catalog.duckdb")
    known = store.build("raw_data", [], {}, "v", lambda out: {"rows": 0})
    catalog.record_artifact(store.manifest(known), known.path)
    assert main(["lineage", "0123456789", "--artifact-root", str(tmp_path)]) == 2
    assert "'0123456789' is not a known artifact in the catalog" in capsys.readouterr().err
    assert main(["lineage", known.fingerprint[:6], "--artifact-root", str(tmp_path)]) == 0
    assert f"raw_data {known.fingerprint}" in capsys.readouterr().out


def test_lineage_without_a_catalog_says_how_to_get_one(tmp_path, capsys):
    assert main(["lineage", "abc", "--artifact-root", str(tmp_path)]) == 2
    assert "no catalog at" in capsys.readouterr().err


def test_an_invalid_selection_is_named(tmp_path, capsys):
    assert main(["run", "--select", "sft_adapter nonsense", "--artifact-root", str(tmp_path / "root")]) == 2
    assert "--select 'sft_adapter nonsense'" in capsys.readouterr().err
