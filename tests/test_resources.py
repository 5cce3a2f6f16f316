import pytest

from engine.artifacts import ArtifactStore
from pipelines.resources import validated_recipe


def test_an_edited_recipe_is_reloaded_not_served_from_cache(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  lora_rank: 4\n")
    assert validated_recipe(str(recipe), "{}").sft.lora_rank == 4
    recipe.write_text("sft:\n  lora_rank: 8\n")
    assert validated_recipe(str(recipe), "{}").sft.lora_rank == 8
    assert validated_recipe(str(recipe), '{"sft.lora_rank": 2}').sft.lora_rank == 2


def test_io_manager_refuses_an_asset_that_was_never_materialized(tmp_path):
    import dagster as dg

    from pipelines.resources import ArtifactIOManager
    manager = ArtifactIOManager(artifact_root=str(tmp_path))
    artifact = ArtifactStore(tmp_path / "artifacts").build("raw_data", [], {}, "v", lambda out: {"n": 1})
    manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("raw_data")), artifact)
    loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("raw_data")))
    assert loaded.fingerprint == artifact.fingerprint and loaded.metrics == {"n": 1}
    with pytest.raises(FileNotFoundError, match="clean_data has not been materialized yet"):
        manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("clean_data")))
