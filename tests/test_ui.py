"""The Dagster UI as a person uses it: the webserver serves the graph, Chromium renders every asset,
and a materialization launched through the webserver (with Launchpad-style recipe overrides) succeeds."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import FLAGS, Browser, chromium, free_port
from tests.processes import run, stop_process_group

ASSETS = ["base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter", "reward_model",
          "dpo_adapter",
          "merged_model", "gptq_model", "awq_model", "eval_base", "eval_sft", "eval_dpo", "eval_merged", "eval_gptq",
          "eval_awq", "model_comparison", "deployment"]
CHROMIUM_FLAGS = [*FLAGS, "--virtual-time-budget=25000"]  # a tall window: the asset list renders visible rows only


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui")
    (home / "dagster").mkdir()
    shutil.copy("pipelines/dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "TUNELINE_HOME": str(home / "tuneline"),
           "TUNELINE_RECIPE": "tiny"}
    port = free_port()
    # what `make ui` runs: the webserver plus the daemon that dequeues runs under the pool limits
    server = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the webserver answers first, the code location loads after
            try:
                if len(graphql(url, "{ assetNodes { id } }", timeout=10)["data"]["assetNodes"]) == len(ASSETS):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the Dagster webserver did not serve the tuneline assets within 120 s")
            time.sleep(1)
        yield url, home
    finally:  # dagster dev stops its webserver and daemon on SIGINT; SIGTERM, then SIGKILL, if it hangs
        stop_process_group(server, grace=30)


def test_every_asset_is_on_the_page_and_a_screenshot_is_saved(webserver, tmp_path):
    url, _ = webserver
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = run([chromium(), *CHROMIUM_FLAGS, *profile, "--dump-dom", f"{url}/assets"], timeout=120, text=True).stdout
    missing = [name for name in ASSETS if name not in dom]
    assert missing == [], f"not on the asset page: {missing}"
    shot = tmp_path / "asset-graph.png"
    run([chromium(), *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", f"{url}/asset-groups"], timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.fixture(scope="module")
def materialized(webserver):
    """base_model, raw_data and clean_data materialized through the webserver, with a Launchpad-style override;
    the run's id and final status."""
    url, _ = webserver
    locations = graphql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    repo = locations["data"]["repositoriesOrError"]["nodes"][0]
    launched = graphql(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", {"p": {
        "selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                     "jobName": "full_pipeline",
                     "assetSelection": [{"path": ["base_model"]}, {"path": ["raw_data"]}, {"path": ["clean_data"]}]},
        "runConfigData": {"resources": {"tuneline": {"config": {"overrides": {"clean.max_quarantine_ratio": 0.3}}}}}}})
    assert launched["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["data"]["launchRun"]["run"]["runId"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = graphql(url, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}', timeout=10)
        status = status["data"]["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    return run_id, status


def test_materialize_through_the_webserver_with_launchpad_overrides(webserver, materialized):
    _, home = webserver
    assert materialized[1] == "SUCCESS"
    from engine.store.catalog import Catalog  # the override reached the run: its check used the Launchpad's bound
    (detail,), = Catalog(home / "tuneline" / "catalog.duckdb").query(
        "SELECT detail FROM check_results WHERE check_name = 'quarantine_ratio_within_bound'")
    assert detail.endswith("bound 30%")


SHOW_PICTURE = """(() => { for (const row of document.querySelectorAll('tr')) {
    const cells = row.querySelectorAll('td');
    if (cells.length && cells[0].innerText.trim() === 'quarantine_reasons') {
      const link = [...row.querySelectorAll('*')].find(e => !e.children.length && e.innerText === '[Show Markdown]');
      if (link) { link.click(); return true; } } } return false; })()"""
PICTURE = """(() => { const i = [...document.querySelectorAll('img')].find(i => i.src.startsWith('data:image/png;base64,'));
    return i && i.complete && i.naturalWidth > 0 ? {width: i.naturalWidth, alt: i.alt} : null; })()"""


def test_the_asset_page_shows_the_quarantine_picture(webserver, materialized, tmp_path):
    """A person opens clean_data, clicks its quarantine_reasons entry and sees the bar chart (a PNG the stage
    drew into its artifact), decoded by the browser."""
    url, _ = webserver
    assert materialized[1] == "SUCCESS"
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(f"{url}/assets/clean_data")
        browser.wait_for(SHOW_PICTURE, 90, "the quarantine_reasons entry on the clean_data page")
        picture = browser.wait_for(PICTURE, 30, "the quarantine picture to be shown and decoded")
        assert picture == {"width": 600, "alt": "quarantine_reasons"}
        browser.screenshot(tmp_path / "clean_data.png")
    finally:
        browser.close()
