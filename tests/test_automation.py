"""The incoming-data sensor and the retrain schedule, evaluated with Dagster's test contexts."""

import json
import os

import dagster as dg
import pytest

from engine.recipe import load_recipe
from pipelines.automation import incoming_data_sensor, retrain_schedule
from pipelines.definitions import full_pipeline
from assets.resource import Tuneline

ROW = {"instruction": "Add the two numbers.", "input": "101 + 202", "output": "303"}


@pytest.fixture
def project(tmp_path):
    data = tmp_path / "data"
    (data / "incoming").mkdir(parents=True)
    (data / "base.json").write_text(json.dumps([ROW]))
    (data / "datasets.yaml").write_text("base:\n  file_name: base.json\n"
                                        "incoming:\n  file_name: incoming\n  formatting: alpaca\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  dataset_dir: {data}\nschedule:\n  cron: '15 4 * * *'\n")
    return data, str(recipe)


def tick(recipe: str, cursor: str | None):
    sensor = incoming_data_sensor(full_pipeline, load_recipe(recipe)[0])
    context = dg.build_sensor_context(cursor=cursor, resources={"tuneline": Tuneline(recipe_name=recipe)})
    return sensor(context), context.cursor


def test_sensor_runs_on_new_or_changed_content_only(project):
    data, recipe = project
    first, cursor = tick(recipe, None)
    assert isinstance(first, dg.RunRequest)  # never seen: the data is new to this sensor
    quiet, cursor = tick(recipe, cursor)
    assert isinstance(quiet, dg.SkipReason) and "no registered data changed" in quiet.skip_message

    (data / "incoming" / "batch1.jsonl").write_text(json.dumps(ROW) + "\n")
    added, cursor = tick(recipe, cursor)
    assert isinstance(added, dg.RunRequest) and added.tags["tuneline/changed_sources"] == "incoming"

    os.utime(data / "base.json", (1, 1))  # a new modification time, same content
    touched, cursor = tick(recipe, cursor)
    assert isinstance(touched, dg.SkipReason)

    (data / "base.json").write_text(json.dumps([ROW, ROW | {"input": "1 + 1", "output": "2"}]))
    edited, _ = tick(recipe, cursor)
    assert isinstance(edited, dg.RunRequest) and edited.tags["tuneline/changed_sources"] == "base"
    assert edited.run_key != added.run_key


def test_sensor_reports_a_malformed_file_and_starts_no_run(project):
    data, recipe = project
    _, cursor = tick(recipe, None)
    (data / "incoming" / "broken.json").write_text('[{"instruction": "Add.", "output": ')
    result, after = tick(recipe, cursor)
    assert isinstance(result, dg.SkipReason)
    assert "malformed" in result.skip_message and "broken.json" in result.skip_message
    assert after == cursor  # nothing recorded: the fixed file will still trigger a run
    (data / "incoming" / "broken.json").write_text(json.dumps([ROW]))
    fixed, _ = tick(recipe, after)
    assert isinstance(fixed, dg.RunRequest)


def test_sensor_reports_a_registered_file_that_is_missing(project):
    data, recipe = project
    (data / "base.json").unlink()
    result, _ = tick(recipe, None)
    assert isinstance(result, dg.SkipReason) and "base.json does not exist" in result.skip_message


def test_schedule_runs_the_retraining_job_on_the_recipes_cron(project):
    _, recipe = project
    schedule = retrain_schedule(full_pipeline, load_recipe(recipe)[0])
    assert schedule.cron_schedule == "15 4 * * *" and schedule.job_name == "full_pipeline"
    result = schedule.evaluate_tick(dg.build_schedule_context())
    assert len(result.run_requests) == 1


def test_sensor_watches_the_pt_corpus_too(project):
    data, recipe = project
    (data / "corpus.jsonl").write_text(json.dumps({"text": "raw text to continue pre-training on"}) + "\n")
    with open(data / "datasets.yaml", "a") as registry:
        registry.write("corpus:\n  file_name: corpus.jsonl\n  columns: {prompt: text}\n")
    with open(recipe, "w") as handle:
        handle.write(f"data:\n  dataset_dir: {data}\n  dataset: [base, incoming]\npt:\n  dataset: [corpus]\n")
    _, cursor = tick(recipe, None)
    (data / "corpus.jsonl").write_text(json.dumps({"text": "an edited corpus line"}) + "\n")
    edited, _ = tick(recipe, cursor)
    assert isinstance(edited, dg.RunRequest) and edited.tags["tuneline/changed_sources"] == "corpus"
