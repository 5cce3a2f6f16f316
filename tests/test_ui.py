"""The Dagster UI as a person uses it: the webserver serves the graph, Chromium renders every asset,
and a materialization launched through the webserver (with Launchpad-style recipe overrides) succeeds."""

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from pipelines.definitions import ASSETS as ASSETS_DEFS
from tests.browser import Browser, free_port
from tests.processes import Child, started

ASSETS = ["base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter", "reward_model",
          "dpo_adapter", "ppo_adapter", "grpo_adapter",
          "merged_model", "gptq_model", "awq_model", "eval_base", "eval_sft", "eval_dpo", "eval_merged", "eval_gptq",
          "eval_awq", "eval_ppo", "eval_grpo", "model_comparison", "deployment"]
GROUPS = sorted({group for asset in ASSETS_DEFS for group in asset.group_names_by_key.values()})
# Every wait below is on an event (a log line, a GraphQL answer, a page element, a run's terminal status), bounded
# generously so that it only fires on a real hang, and fails naming what it waited for.
SERVER_READY_S = 600    # dagster dev's "Serving dagster-webserver" line, then the code location's assets
RUN_FINISHED_S = 1800   # the launched run reaching SUCCESS, FAILURE or CANCELED
PAGE_S = 300            # an element appearing in the page


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def poll(server: Child, probe, timeout: float, what: str):
    """probe()'s value once it is truthy (a request refused, timed out or half answered counts as not yet); fails at
    once if the server exits, and after `timeout` s naming `what`."""
    def attempt():
        try:
            return probe()
        except (OSError, ValueError):  # not listening yet, a request that timed out, a half answer: ask again
            return None
    return server.wait_until(attempt, timeout, what, interval=1)


def serves_all_assets(url: str) -> bool:
    answer = graphql(url, "{ assetNodes { id } }", timeout=30)
    return len((answer.get("data") or {}).get("assetNodes") or []) == len(ASSETS)


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui")
    (home / "dagster").mkdir()
    shutil.copy("pipelines/dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "TUNELINE_HOME": str(home / "tuneline"),
           "TUNELINE_RECIPE": "tiny"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # what `make ui` runs: the webserver plus the daemon that dequeues runs under the pool limits; its output goes
    # to files (nothing blocks on a pipe). On leaving: SIGINT (dagster dev stops its webserver and daemon), then
    # SIGTERM, then SIGKILL, 30 s apart
    with started([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                  "-p", str(port)], home / "logs", grace=30, env=env) as server:
        ready = f"Serving dagster-webserver on {url}"
        poll(server, lambda: ready in server.out() + server.err(), SERVER_READY_S, f"the line '{ready}'")
        # the webserver answers first, the code location loads after
        poll(server, lambda: serves_all_assets(url), SERVER_READY_S, f"the {len(ASSETS)} tuneline assets in GraphQL")
        yield url, home, server


def all_shown(names: list[str]) -> str:
    """A page expression, true once every name is in the page's text."""
    return f"""(() => {{ const text = document.body ? document.body.innerText : '';
        return {json.dumps(names)}.every(n => text.includes(n)); }})()"""


def graph_nodes_shown(names: list[str]) -> str:
    """A page expression, true once the lineage graph has drawn a node (a foreignObject) for each name."""
    return f"""(() => {{ const nodes = [...document.querySelectorAll('foreignObject')].map(n => n.textContent);
        return {json.dumps(names)}.every(name => nodes.some(text => text.includes(name))); }})()"""


def test_every_asset_is_on_the_page_and_a_screenshot_is_saved(webserver, tmp_path):
    url, _, _ = webserver
    browser = Browser(tmp_path / "profile")  # a tall window: the asset list renders visible rows only
    try:
        browser.goto(f"{url}/assets")
        browser.wait_for(all_shown(ASSETS), PAGE_S, f"the {len(ASSETS)} asset names on the asset page")
        browser.goto(f"{url}/asset-groups")  # the lineage graph, one node per asset group
        browser.wait_for(graph_nodes_shown(GROUPS), PAGE_S, f"the graph nodes of the groups {GROUPS}")
        shot = browser.screenshot(tmp_path / "asset-graph.png")
    finally:
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def launch(url: str, assets: list[str], overrides: dict) -> str:
    """A run of full_pipeline for `assets` with Launchpad-style recipe overrides, launched through the webserver's
    GraphQL; its run id."""
    locations = graphql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    repo = locations["data"]["repositoriesOrError"]["nodes"][0]
    launched = graphql(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", {"p": {
        "selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                     "jobName": "full_pipeline", "assetSelection": [{"path": [name]} for name in assets]},
        "runConfigData": {"resources": {"tuneline": {"config": {"overrides": overrides}}}}}})
    assert launched["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    return launched["data"]["launchRun"]["run"]["runId"]


def finished_status(url: str, server: Child, run_id: str) -> str:
    """The run's terminal status (SUCCESS, FAILURE or CANCELED), waited for."""
    def finished() -> str | None:
        answer = graphql(url, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')
        status = ((answer.get("data") or {}).get("runOrError") or {}).get("status")
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None
    return poll(server, finished, RUN_FINISHED_S, f"run {run_id} to reach SUCCESS, FAILURE or CANCELED")


@pytest.fixture(scope="module")
def materialized(webserver):
    """base_model, raw_data and clean_data materialized through the webserver, with a Launchpad-style override;
    the run's id and final status."""
    url, _, server = webserver
    run_id = launch(url, ["base_model", "raw_data", "clean_data"], {"clean.max_quarantine_ratio": 0.3})
    return run_id, finished_status(url, server, run_id)


def test_materialize_through_the_webserver_with_launchpad_overrides(webserver, materialized):
    _, home, _ = webserver
    assert materialized[1] == "SUCCESS"
    from engine.store.catalog import Catalog  # the override reached the run: its check used the Launchpad's bound
    (detail,), = Catalog(home / "tuneline" / "catalog.duckdb").query(
        "SELECT detail FROM check_results WHERE check_name = 'quarantine_ratio_within_bound'")
    assert detail.endswith("bound 30%")


# the pictures on the asset page (in place, no click): tests/test_ui_curves.py
