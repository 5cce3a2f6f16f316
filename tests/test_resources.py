import json

from assets.resource import Tuneline, validated_recipe


def test_an_edited_recipe_is_reloaded_not_served_from_cache(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  lora_rank: 4\n")
    assert validated_recipe(str(recipe), "{}").sft.lora_rank == 4
    recipe.write_text("sft:\n  lora_rank: 8\n")
    assert validated_recipe(str(recipe), "{}").sft.lora_rank == 8
    assert validated_recipe(str(recipe), '{"sft.lora_rank": 2}').sft.lora_rank == 2


def test_a_run_keeps_one_plan_even_when_data_changes_under_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps([{"instruction": "Add.", "input": "1 + 1", "output": "2"}]))
    (data / "datasets.yaml").write_text("rows:\n  file_name: rows.json\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  dataset_dir: {data}\n")
    tuneline = Tuneline(recipe_name=str(recipe), artifact_root=str(tmp_path / "home"))
    first = tuneline.plan("run-1")["raw_data"].fingerprint
    (data / "rows.json").write_text(json.dumps([{"instruction": "Add.", "input": "2 + 2", "output": "4"}]))
    assert tuneline.plan("run-1")["raw_data"].fingerprint == first  # the run that started keeps its inputs
    assert tuneline.plan("run-2")["raw_data"].fingerprint != first  # the next run sees the new data
