"""The Dagster UI as a person uses it: the webserver serves the graph, Chromium renders every asset,
and a materialization launched through the webserver (with Launchpad-style recipe overrides) succeeds."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.processes import run, stop_process_group

ASSETS = ["base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter", "reward_model",
          "dpo_adapter",
          "merged_model", "gptq_model", "awq_model", "eval_base", "eval_sft", "eval_dpo", "eval_merged", "eval_gptq",
          "eval_awq", "model_comparison", "deployment"]
# a tall window: the asset list renders only the rows that are visible
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=25000", "--window-size=1600,3000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    return path


def test_every_asset_is_on_the_page_and_a_screenshot_is_saved(webserver, tmp_path):
    url, _ = webserver
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = run([chromium(), *CHROMIUM_FLAGS, *profile, "--dump-dom", f"{url}/assets"], timeout=120, text=True).stdout
    missing = [name for name in ASSETS if name not in dom]
    assert missing == [], f"not on the asset page: {missing}"
    shot = tmp_path / "asset-graph.png"
    run([chromium(), *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", f"{url}/asset-groups"], timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_materialize_through_the_webserver_with_launchpad_overrides(webserver):
    url, home = webserver
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
    assert status == "SUCCESS"
    from engine.catalog import Catalog  # the override reached the run: its check used the Launchpad's bound
    (detail,), = Catalog(home / "tuneline" / "catalog.duckdb").query(
        "SELECT detail FROM check_results WHERE check_name = 'quarantine_ratio_within_bound'")
    assert detail.endswith("bound 30%")
