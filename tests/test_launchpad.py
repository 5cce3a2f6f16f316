"""The Launchpad's typed form (one job per recipe, its config schema from the recipe's pydantic model, checked by the
CLI's rules when Dagster validates the run's config) and the tags every run carries, whoever starts it."""

import typing

import dagster as dg
import pytest
from pydantic import BaseModel

from assets.run_tags import COMMAND, DIGEST, FAILURE, OVERRIDES, RECIPE, VERSION, recipe_digest
from engine.recipe import RECIPE_DIR, Recipe, load_recipe
from pipelines.definitions import build_definitions

TAGS = (RECIPE, DIGEST, OVERRIDES, COMMAND, VERSION)


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    return build_definitions("tiny", str(tmp_path_factory.mktemp("home")))


def recipe_keys(section: type[BaseModel], prefix: str = "") -> dict[str, typing.Any]:
    """Every leaf key of the recipe, dotted, with its pydantic field."""
    keys = {}
    for name, info in section.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(recipe_keys(annotation, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = info
    return keys


def schema_field(job, dotted: str):
    config_type = job.config_mapping.config_schema.config_type
    field = None
    for part in dotted.split("."):
        field = config_type.fields[part]
        config_type = field.config_type
    return field


def literal_choices(annotation) -> list | None:
    for arg in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(arg) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(arg)):
            return sorted(typing.get_args(arg))
    return None


def test_one_job_per_recipe_file(defs):
    names = {job.name for job in defs.jobs}
    assert names == {"full_pipeline", *(f"{p.stem}_pipeline" for p in RECIPE_DIR.glob("*.yaml"))}
    assert {"tiny_pipeline", "smol_pipeline"} <= names


def test_a_recipe_path_in_tuneline_recipe_gets_its_job_too(tmp_path):
    recipe = tmp_path / "my-run.yaml"
    recipe.write_text("sft:\n  learning_rate: 2.0e-3\n")
    defs = build_definitions(str(recipe), str(tmp_path / "home"))
    job = defs.resolve_job_def("my_run_pipeline")
    assert schema_field(job, "sft.learning_rate").default_value == 2e-3


def test_the_form_holds_every_recipe_key_with_its_type_default_description_and_choices(defs):
    job = defs.resolve_job_def("tiny_pipeline")
    recipe = load_recipe("tiny")[0].model_dump(mode="json")
    keys = recipe_keys(Recipe)
    assert len(keys) > 150
    for dotted, info in keys.items():
        field = schema_field(job, dotted)
        assert not field.is_required, dotted
        assert field.description == info.description, dotted
        value = recipe
        for part in dotted.split("."):
            value = value[part]
        if value is None:
            assert field.default_value is None, dotted
        else:
            assert field.default_value == value, dotted  # the tiny recipe's value, not the model's default
        choices = literal_choices(info.annotation)
        if choices:
            config_type = field.config_type
            while config_type.kind.name in ("NONEABLE", "ARRAY"):  # Optional[Literal], list[Literal]: the items
                config_type = config_type.inner_type
            assert sorted(v.config_value for v in config_type.enum_values) == choices, dotted
    assert schema_field(job, "sft.learning_rate").config_type.given_name == "Float"
    assert schema_field(job, "sft.lora_rank").config_type.given_name == "Int"
    assert "linear" in [v.config_value for v in schema_field(job, "sft.lr_scheduler_type").config_type.enum_values]
    assert "qwen" in [v.config_value for v in schema_field(job, "data.template").config_type.inner_type.enum_values]


def test_the_form_maps_to_the_recipe_and_the_keys_that_differ(defs):
    job = defs.resolve_job_def("tiny_pipeline")
    resolved = dg.validate_run_config(job, {"sft": {"learning_rate": 0.004, "lora_rank": 16},
                                            "data": {"template": "qwen"}})
    config = resolved["resources"]["tuneline"]["config"]
    assert config["recipe_name"] == "tiny"
    assert config["overrides"] == {"sft.learning_rate": 0.004, "data.template": "qwen"}  # lora_rank: tiny's own
    assert dg.validate_run_config(job, {})["resources"]["tuneline"]["config"]["overrides"] == {}


@pytest.mark.parametrize("config, named", [
    ({"sft": {"learning_rate": "fast"}}, "root:sft:learning_rate"),       # a wrong type: the schema refuses it
    ({"data": {"template": "not_a_template"}}, "root:data:template"),     # not one of the choices
    ({"sft": {"lr_scheduler_type": "sometimes"}}, "root:sft:lr_scheduler_type"),
    ({"sft": {"learning_rate": -0.001}}, "sft.learning_rate: Input should be greater than 0"),  # the recipe's rule
    ({"sft": {"finetuning_type": "full", "quantization_bit": 4}}, "quantization_bit (QLoRA)"),
])
def test_a_value_the_recipe_refuses_is_refused_by_dagster_s_config_validation(defs, config, named):
    job = defs.resolve_job_def("tiny_pipeline")
    with pytest.raises(dg.DagsterInvalidConfigError, match=None) as refused:
        dg.validate_run_config(job, config)
    assert named in str(refused.value)


def test_a_launchpad_run_is_tagged_when_it_starts_and_its_failure_summarized(defs):
    """A run of the tiny_pipeline job, as the Launchpad starts it (its job's tags and the form's config): the
    resource adds the recipe's tags, the job's failure hook names the failed asset and why."""
    job = defs.resolve_job_def("tiny_pipeline")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config={"clean": {"max_quarantine_ratio": 0.0}}, instance=instance,
                                        asset_selection=[dg.AssetKey("raw_data"), dg.AssetKey("clean_data")],
                                        raise_on_error=False)
        tags = instance.get_run_by_id(result.run_id).tags
    assert not result.success
    recipe = load_recipe("tiny", {"clean.max_quarantine_ratio": 0.0})[0]
    assert {k: tags[k] for k in (RECIPE, OVERRIDES, COMMAND, DIGEST)} == {
        RECIPE: "tiny", OVERRIDES: "clean.max_quarantine_ratio=0.0", COMMAND: "launchpad",
        DIGEST: recipe_digest(recipe)}
    assert tags[VERSION].startswith("0.")
    assert tags[FAILURE].startswith("clean_data: ") and "quarantine_ratio_within_bound" in tags[FAILURE]


def test_a_cli_run_carries_the_tags_and_its_failure(tmp_path, monkeypatch):
    from pipelines.cli import main
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    code = main(["run", "--select", "raw_data,clean_data", "--set", "clean.max_quarantine_ratio=0",
                 "--artifact-root", str(tmp_path / "root")])
    assert code != 0
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
    tags = run.tags
    assert tags[RECIPE] == "tiny" and tags[OVERRIDES] == "clean.max_quarantine_ratio=0"
    assert tags[COMMAND] == "tuneline run --select raw_data,clean_data"
    assert tags[DIGEST] == recipe_digest(load_recipe("tiny", {"clean.max_quarantine_ratio": 0})[0])
    assert tags["tuneline/host"] and tags["tuneline/pid"]  # the reaper's
    assert tags[FAILURE].startswith("clean_data: ") and "quarantine_ratio_within_bound" in tags[FAILURE]


def test_schedule_and_sensor_runs_carry_the_tags(tmp_path):
    from assets.resource import Tuneline
    from pipelines.automation import incoming_data_sensor, retrain_schedule
    from pipelines.definitions import full_pipeline
    data = tmp_path / "data"
    data.mkdir()
    (data / "base.json").write_text('[{"instruction": "Add.", "input": "1 + 2", "output": "3"}]')
    (data / "datasets.yaml").write_text("base:\n  file_name: base.json\n")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"data:\n  dataset_dir: {data}\n  dataset: [base]\n")
    recipe = load_recipe(str(recipe_path))[0]

    schedule = retrain_schedule(full_pipeline, recipe, str(recipe_path))
    (request,) = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    assert {k: request.tags[k] for k in (RECIPE, COMMAND, OVERRIDES, DIGEST)} == {
        RECIPE: str(recipe_path), COMMAND: "schedule", OVERRIDES: "", DIGEST: recipe_digest(recipe)}

    sensor = incoming_data_sensor(full_pipeline, recipe)
    context = dg.build_sensor_context(resources={"tuneline": Tuneline(
        recipe_name=str(recipe_path), overrides={"sft.learning_rate": 0.002}, artifact_root=str(tmp_path / "h"))})
    request = sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert {k: request.tags[k] for k in (RECIPE, COMMAND, OVERRIDES)} == {
        RECIPE: str(recipe_path), COMMAND: "sensor", OVERRIDES: "sft.learning_rate=0.002"}
    assert request.tags[DIGEST] == recipe_digest(load_recipe(str(recipe_path), {"sft.learning_rate": 0.002})[0])
    assert set(TAGS) <= set(request.tags)


def test_the_base_model_is_in_its_own_group_upstream_of_data_and_training(defs):
    graph = defs.resolve_asset_graph()
    group = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert group["base_model"] == "model"
    # no training asset feeds a data asset: the group view cannot draw training before data
    assert not any(group[p.to_user_string()] == "training" for key in graph.get_all_asset_keys()
                   if group[key.to_user_string()] == "data" for p in graph.get(key).parent_keys)


def test_a_recipe_file_that_does_not_load_gets_no_job_and_a_warning(tmp_path, monkeypatch):
    import pipelines.launchpad as launchpad
    (tmp_path / "good.yaml").write_text("sft:\n  learning_rate: 2.0e-3\n")
    (tmp_path / "broken.yaml").write_text("sft:\n  learning_rat: 2.0e-3\n")
    monkeypatch.setattr(launchpad, "RECIPE_DIR", tmp_path)
    with pytest.warns(UserWarning, match=r"no broken_pipeline job in the Launchpad: .*sft\.learning_rat: unknown key"):
        jobs = launchpad.recipe_jobs("tiny", str(tmp_path / "home"), {}, set())
    assert [job.name for job in jobs] == ["good_pipeline", "tiny_pipeline"]
