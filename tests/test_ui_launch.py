"""Launching from the Dagster UI as a LlamaBoard user does: the tiny recipe's job opens in the Launchpad with the
recipe's keys as its form, the learning rate is changed there, the run starts, and the runs list tells the run
apart by its tags; SFT's loss points arrived while it trained, its loss curve shows in place on the asset page, and
the lineage records the changed learning rate. And the group view reads left to right."""

import json
import urllib.error
import urllib.parse

from engine.store.catalog import Catalog
from tests.browser import Browser
from tests.test_ui_curves import inline_picture
from tests.test_ui import PAGE_S, all_shown, finished_status, graph_nodes_shown, graphql, webserver  # noqa: F401

SELECTION = ["raw_data", "clean_data", "base_model", "formatted_data", "pt_model", "sft_adapter"]
GROUP_ORDER = ["model", "data", "training", "export", "evaluation", "deployment"]
LOCATION = "pipelines.definitions:defs"
LEARNING_RATE = "0.004"  # tiny's SFT learning rate is 3.0e-3

GROUP_X = """(() => { const x = {}; for (const node of document.querySelectorAll('foreignObject')) {
    const name = node.textContent.trim(); if (name) x[name] = node.getBoundingClientRect().x; } return x; })()"""
SCAFFOLDED = """(() => { const editor = document.querySelector('.CodeMirror');
    return editor && editor.CodeMirror.getValue().includes('\\nsft:\\n'); })()"""
# a person clicks into the YAML editor and types over tiny's sft learning rate; the page's CodeMirror takes the text
SET_LEARNING_RATE = """(() => { const cm = document.querySelector('.CodeMirror').CodeMirror; const text = cm.getValue();
    const sft = text.indexOf('\\nsft:\\n'); const at = text.indexOf('  learning_rate: ', sft);
    const end = text.indexOf('\\n', at);
    cm.setValue(text.slice(0, at) + '  learning_rate: %s' + text.slice(end));
    return cm.getValue().slice(at, end + 8); })()"""


def answer_of(url: str, query: str, variables: dict) -> dict:
    """A GraphQL answer, also where the webserver answers it with HTTP 500 (a PythonError from the code location)."""
    try:
        return graphql(url, query, variables)
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def click_button(text: str) -> str:
    """A page expression: clicks the enabled button labelled `text` (true once it did)."""
    return f"""(() => {{ const b = [...document.querySelectorAll('button')].find(
        b => b.innerText.trim() === {json.dumps(text)} && !b.disabled);
        if (b) {{ b.click(); return true; }} return false; }})()"""


def test_groups_read_left_to_right(webserver, tmp_path):  # noqa: F811
    url, _, _ = webserver
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(f"{url}/asset-groups")
        browser.wait_for(graph_nodes_shown(GROUP_ORDER), PAGE_S, f"the graph nodes of the groups {GROUP_ORDER}")
        x = browser.evaluate(GROUP_X)
        browser.screenshot(tmp_path / "asset-groups.png")
    finally:
        browser.close()
    assert sorted(GROUP_ORDER, key=lambda g: x[g]) == GROUP_ORDER, x


def test_launch_the_tiny_recipe_from_the_launchpad_with_a_changed_learning_rate(webserver, tmp_path):  # noqa: F811
    url, home, server = webserver
    # what Dagster's own "Open in Launchpad" does: a new Launchpad session for these assets of tiny_pipeline
    query = "&".join(f"assetSelection[{i}][assetKey][path][0]={name}" for i, name in enumerate(SELECTION))
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(f"{url}/locations/{urllib.parse.quote(LOCATION)}/jobs/tiny_pipeline/playground/setup?{query}")
        browser.wait_for(click_button("Scaffold all default config"), PAGE_S, "the Launchpad's scaffold button")
        browser.wait_for(click_button("Confirm"), PAGE_S, "the scaffold dialog's Confirm button")
        browser.wait_for(SCAFFOLDED, PAGE_S, "the form's keys (the recipe's sections) in the YAML editor")
        changed = browser.evaluate(SET_LEARNING_RATE % LEARNING_RATE)
        assert changed.startswith(f"  learning_rate: {LEARNING_RATE}\n"), changed
        browser.wait_for(click_button("Launch Run"), PAGE_S, "an enabled Launch Run button")
        run_id = browser.wait_for("(() => { const m = location.pathname.match(/\\/runs\\/([0-9a-f-]{36})/); "
                                  "return m && m[1]; })()", PAGE_S, "the launched run's page")

        selected = graphql(url, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ assetSelection {{ path }} }} }} }}')
        assert sorted(k["path"][0] for k in selected["data"]["runOrError"]["assetSelection"]) == sorted(SELECTION)

        status = finished_status(url, server, run_id)

        browser.goto(f"{url}/runs")
        shown = [run_id.split("-")[0], "tiny_pipeline", "tuneline/recipe: tiny", "tuneline/command: launchpad",
                 f"tuneline/overrides: sft.learning_rate={LEARNING_RATE}", "tuneline/recipe_digest: ",
                 "tuneline/version: "]
        browser.wait_for(all_shown(shown), PAGE_S, f"the run's tags in the runs list: {shown}")
        browser.screenshot(tmp_path / "runs.png")
        browser.goto(f"{url}/assets/sft_adapter")
        curve = browser.wait_for(inline_picture("loss_curve"), PAGE_S, "the loss curve in place on sft_adapter's page")
    finally:
        browser.close()
    assert status == "SUCCESS" and curve["alt"] == "loss_curve"
    events = graphql(url, """{ assetOrError(assetKey: {path: ["sft_adapter"]}) { ... on Asset {
        assetObservations { runId timestamp metadataEntries { label } }
        assetMaterializations { runId timestamp } } } }""")["data"]["assetOrError"]
    points = [float(o["timestamp"]) for o in events["assetObservations"]
              if o["runId"] == run_id and any(e["label"] == "train/loss" for e in o["metadataEntries"])]
    (built,), = [[float(m["timestamp"])] for m in events["assetMaterializations"] if m["runId"] == run_id]
    assert len(points) >= 2 and max(points) < built  # live: every loss point recorded before the step finished
    (config,), = Catalog(home / "tuneline" / "catalog.duckdb").query(  # the run trained with the form's value
        "SELECT config FROM artifacts WHERE asset = 'sft_adapter'")
    assert f'"learning_rate": {LEARNING_RATE}' in config


def test_a_value_the_recipe_refuses_is_refused_at_launch_naming_the_key(webserver):  # noqa: F811
    """Types and choices are checked as the config is typed (isPipelineConfigValid); the recipe's own rules when
    the run is launched: no run is created."""
    url, _, _ = webserver
    repo = graphql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")
    name = repo["data"]["repositoriesOrError"]["nodes"][0]["name"]
    selector = {"repositoryLocationName": LOCATION, "repositoryName": name, "pipelineName": "tiny_pipeline"}
    typed = graphql(url, """query($s: PipelineSelector!, $c: RunConfigData) { isPipelineConfigValid(pipeline: $s,
        mode: "default", runConfigData: $c) { __typename
        ... on RunConfigValidationInvalid { errors { message } } } }""",
                    {"s": selector, "c": {"data": {"template": "not_a_template"}}})["data"]["isPipelineConfigValid"]
    assert typed["__typename"] == "RunConfigValidationInvalid" and "root:data:template" in typed["errors"][0]["message"]
    runs_before = graphql(url, "{ runsOrError { ... on Runs { count } } }")["data"]["runsOrError"]["count"]
    launched = answer_of(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
        ... on PythonError { message } ... on RunConfigValidationInvalid { errors { message } } } }""", {"p": {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": name, "jobName": "tiny_pipeline",
                     "assetSelection": [{"path": ["raw_data"]}]},
        "runConfigData": {"sft": {"learning_rate": -0.001}}}})["data"]["launchRun"]
    assert "sft.learning_rate: Input should be greater than 0 (got -0.001)" in json.dumps(launched), launched
    assert graphql(url, "{ runsOrError { ... on Runs { count } } }")["data"]["runsOrError"]["count"] == runs_before
