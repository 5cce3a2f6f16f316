"""The team deployment (pipelines/deploy/dagster.yaml): the tiny graph's data stages run against a real Postgres
(pgserver, an embedded PostgreSQL started for the test) as the instance's storage, and a GPU class's pool replaces
the machine's training lock where the deployment names one."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import psycopg2
import pytest

from engine.graph import STAGES
from engine.store.home import GPU_POOL_ENV, Home
from pipelines.definitions import ASSETS, resources

DEPLOYED = "pipelines/deploy/dagster.yaml"


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """A PostgreSQL server of its own, on a Unix socket under a temporary folder, stopped and deleted afterwards."""
    import pgserver
    server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres installs psycopg2 (the yaml says so)
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()


@pytest.fixture
def deployed_instance(postgres_url, tmp_path, monkeypatch):
    """The deployment's dagster.yaml, as shipped, in a DAGSTER_HOME of its own, pointed at the test's Postgres."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(DEPLOYED, home / "dagster.yaml")
    monkeypatch.setenv("TUNELINE_PG_URL", postgres_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_the_data_stages_run_against_the_postgres_instance(deployed_instance, postgres_url, tmp_path):
    assert type(deployed_instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    result = dg.materialize(ASSETS, resources=resources("tiny", str(tmp_path / "root")), instance=deployed_instance,
                            selection=["raw_data", "clean_data"])
    assert result.success
    for asset in ("raw_data", "clean_data"):
        assert deployed_instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
    # the run and its events are rows in Postgres itself, not in a sqlite file beside it
    with psycopg2.connect(postgres_url.replace("postgresql+psycopg2://", "postgresql://", 1)) as db, db.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchall() == [("SUCCESS",)]
        cur.execute("SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND "
                    "dagster_event_type = 'ASSET_MATERIALIZATION'", (result.run_id,))
        assert sorted(json.loads(key)[0] for (key,) in cur.fetchall()) == ["clean_data", "raw_data"]
    assert not list((tmp_path / "dagster").glob("**/*.db"))  # no sqlite storage was created


def test_a_gpu_pool_replaces_the_training_lock_where_the_deployment_names_one(tmp_path, monkeypatch):
    home = Home(tmp_path / "root")
    with home.training_slot("sft_adapter"):  # no pool: the machine's file lock
        assert home.lock_path("training", "slot").is_file()
    monkeypatch.setenv(GPU_POOL_ENV, "gpu-h100")
    shutil.rmtree(home.locks)
    with home.training_slot("sft_adapter"):  # a pool: Dagster admits the step, no file lock is taken
        assert not home.lock_path("training", "slot").exists()
    # the training assets declare that pool (read when the definitions load, as a code location does)
    pools = subprocess.run(
        [sys.executable, "-c", "from pipelines.definitions import ASSETS; import json; print(json.dumps("
         "{k.to_user_string(): a.op.pool for a in ASSETS for k in a.keys}))"],
        env={**os.environ, GPU_POOL_ENV: "gpu-h100"}, capture_output=True, text=True, timeout=300, check=True)
    declared = json.loads(pools.stdout.strip().splitlines()[-1])
    assert {k for k, pool in declared.items() if pool == "gpu-h100"} == {s.name for s in STAGES if s.training}
    assert {pool for k, pool in declared.items() if k in ("raw_data", "clean_data", "merged_model")} == {None}
