"""Building a planned stage: parents by identity, per-fingerprint locks, atomic publish, a catalog that heals,
and an entry point that can read only the recipe keys its stage declares."""

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from engine.build import NotBuilt, build_stage
from engine.errors import DataError
from engine.store.home import Home
from engine.plan import make_plan
from engine.recipe import load_recipe
from engine.stage import Stage, UndeclaredKey, view


def write_source(run):
    (run.out / "rows.txt").write_text(f"lr={run.recipe.sft.learning_rate}")
    return {"written": True}


def copy_parent(run):
    (run.out / "copy.txt").write_text((run.inputs["source"] / "rows.txt").read_text())
    return {"parent": run.inputs["source"].name}


SOURCE = Stage("source", entry=write_source, keys=("sft.learning_rate",))
CHILD = Stage("child", entry=copy_parent, parents=("source",))


def plan_for(stages, overrides=None):
    recipe = load_recipe("tiny", overrides)[0]
    return recipe, make_plan(stages, recipe)


def test_a_stage_reads_its_parent_by_the_fingerprint_its_own_recipe_implies(tmp_path):
    home = Home(tmp_path)
    recipe_a, plan_a = plan_for([SOURCE, CHILD], {"sft.learning_rate": 1e-3})
    recipe_b, plan_b = plan_for([SOURCE, CHILD], {"sft.learning_rate": 2e-3})
    build_stage(home, plan_a, "source", recipe_a)
    build_stage(home, plan_b, "source", recipe_b)  # written last: must not leak into run a
    child_a = build_stage(home, plan_a, "child", recipe_a)
    assert (child_a.path / "copy.txt").read_text() == "lr=0.001"
    manifest = json.loads((child_a.path / "manifest.json").read_text())
    assert manifest["parents"] == {"source": plan_a["source"].fingerprint}


def test_a_parent_not_built_for_this_recipe_is_named_never_swapped(tmp_path):
    home = Home(tmp_path)
    recipe_a, plan_a = plan_for([SOURCE, CHILD], {"sft.learning_rate": 1e-3})
    recipe_b, plan_b = plan_for([SOURCE, CHILD], {"sft.learning_rate": 2e-3})
    build_stage(home, plan_b, "source", recipe_b)
    with pytest.raises(NotBuilt, match=f"child needs source {plan_a['source'].fingerprint}.*not built.*'\\*child'"):
        build_stage(home, plan_a, "child", recipe_a)


def test_the_entry_point_reads_only_declared_keys(tmp_path):
    recipe = load_recipe("tiny")[0]
    sneaky = Stage("sneaky", entry=write_source, keys=("sft.lora_rank",))
    recipe_view = view(recipe, sneaky, sneaky.keys)
    assert recipe_view.sft.lora_rank == recipe.sft.lora_rank
    with pytest.raises(UndeclaredKey, match="stage sneaky read recipe key 'sft.learning_rate'"):
        recipe_view.sft.learning_rate
    whole = Stage("whole", entry=write_source, keys=("reward",))
    with pytest.raises(UndeclaredKey, match="reward.min_accuracy, a check threshold"):
        view(recipe, whole, whole.keys).reward.min_accuracy
    with pytest.raises(UndeclaredKey):
        build_stage(Home(tmp_path), make_plan([sneaky], recipe), "sneaky", recipe)
    assert not list((tmp_path / "artifacts" / "sneaky").iterdir())  # no half artifact, no work directory left


def test_check_thresholds_are_not_in_any_fingerprint():
    stage = Stage("reward_like", entry=write_source, keys=("reward",))
    before = make_plan([stage], load_recipe("tiny")[0])["reward_like"]
    after = make_plan([stage], load_recipe("tiny", {"reward.min_accuracy": 0.99})[0])["reward_like"]
    assert before.fingerprint == after.fingerprint and "min_accuracy" not in before.config["reward"]


def wait_for_file(path: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what} ({path})")
        time.sleep(0.02)


def held_counting_entry(run):
    """Counts its builds, then holds the fingerprint's lock until the test writes `release` (once the second
    worker has said it waits): the two workers overlap by construction, not by timing."""
    artifacts = run.out.parent.parent
    with open(artifacts / "builds.log", "a") as log:
        log.write(f"{run.stage}\n")
    wait_for_file(artifacts / "release", 300, "the test to release the lock")
    (run.out / "done").write_text("x")
    return {}


HELD = Stage("slow", entry=held_counting_entry)


def build_slow(root: str, queue) -> None:
    recipe = load_recipe("tiny")[0]
    artifact = build_stage(Home(root), make_plan([HELD], recipe), "slow", recipe, log=queue.put)
    queue.put(("built", str(artifact.path), artifact.cache_hit))


def test_two_runs_of_the_same_fingerprint_build_it_once(tmp_path):
    context = multiprocessing.get_context("spawn")  # the entry's module is imported afresh, as a second run would
    queue = context.Queue()
    workers = [context.Process(target=build_slow, args=(str(tmp_path), queue)) for _ in range(2)]
    try:
        workers[0].start()
        # the first worker is inside the entry, holding the lock
        wait_for_file(tmp_path / "artifacts" / "builds.log", 120, "the first worker to hold the lock")
        workers[1].start()
        waited = queue.get(timeout=120)  # the second worker found the lock held
        (tmp_path / "artifacts" / "release").write_text("")
        results = [queue.get(timeout=120) for _ in range(2)]
        for worker in workers:
            worker.join(timeout=60)
        assert all(w.exitcode == 0 for w in workers)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
    assert isinstance(waited, str) and "is being built by" in waited and '"pid"' in waited
    assert len({path for _, path, _ in results}) == 1 and sorted(hit for _, _, hit in results) == [False, True]
    assert (tmp_path / "artifacts" / "builds.log").read_text() == "slow\n"


def test_a_crashed_build_leaves_nothing_visible_and_starts_over(tmp_path):
    home = Home(tmp_path)
    recipe, plan = plan_for([SOURCE])
    fingerprint = plan["source"].fingerprint
    stale = home.work_dir("source", fingerprint)  # what kill -9 in the middle of a build leaves
    stale.mkdir(parents=True)
    (stale / "half.bin").write_text("half")
    artifact = build_stage(home, plan, "source", recipe)
    assert sorted(p.name for p in artifact.path.iterdir()) == ["manifest.json", "rows.txt"]
    assert not stale.exists()


def test_outside_content_that_changes_during_the_build_fails_the_stage(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("v1")

    def edits_its_input(run):
        data.write_text("v2")
        return {}
    stage = Stage("reads_file", entry=edits_its_input, outside=lambda r, hasher: {"data": hasher.file(data)})
    recipe = load_recipe("tiny")[0]
    with pytest.raises(DataError, match="changed while it was being read"):
        build_stage(Home(tmp_path / "home"), make_plan([stage], recipe), "reads_file", recipe)


def rows_entry(run):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from engine.store.tables import QUARANTINE_COLUMNS, schema_of
    rows = [{"source": "s", "row_id": f"s:{i}", "stage": "ingest", "reason": "bad", "detail": "d"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema_of(QUARANTINE_COLUMNS)), run.out / "quarantine.parquet")
    return {}


ROWS = Stage("rows", entry=rows_entry, tables={"quarantine": "quarantine"})


@pytest.mark.parametrize("damage", ["deleted", "corrupted", "rows_lost"])
def test_the_catalog_heals_from_the_artifacts(tmp_path, damage):
    home = Home(tmp_path)
    recipe, plan = plan_for([ROWS])
    artifact = build_stage(home, plan, "rows", recipe)
    count = "SELECT count(*) FROM quarantine WHERE artifact = ?"
    assert home.catalog().query(count, [artifact.fingerprint]) == [(3,)]
    if damage == "deleted":
        home.catalog_path.unlink()
    elif damage == "corrupted":
        home.catalog_path.write_bytes(b"not a database" * 100)
    else:  # a crash between publish and record: the artifact row is there, its row files are not
        home.catalog().query("DELETE FROM recorded")
    again = build_stage(home, plan, "rows", recipe)
    assert again.cache_hit
    assert home.catalog().query(count, [artifact.fingerprint]) == [(3,)]
    assert home.catalog().query("SELECT asset FROM artifacts") == [("rows",)]
    build_stage(home, plan, "rows", recipe)  # idempotent: nothing doubles
    assert home.catalog().query(count, [artifact.fingerprint]) == [(3,)]
    if damage == "corrupted":
        assert list(tmp_path.glob("catalog.duckdb.corrupt-*"))


def test_retention_keeps_the_most_recently_used_and_never_one_in_use(tmp_path):
    home = Home(tmp_path)

    def build(lr):
        recipe, plan = plan_for([SOURCE], {"sft.learning_rate": lr, "retention.keep_last": 2})
        return build_stage(home, plan, "source", recipe)
    first = build(1e-3)
    with home.lock("source", first.fingerprint, shared=True):  # a running stage reads it
        second, third = build(2e-3), build(3e-3)
        assert first.path.is_dir()  # the least recently used, but in use: kept
    fourth = build(4e-3)
    assert not first.path.exists() and not second.path.exists()
    assert third.path.is_dir() and fourth.path.is_dir()


def test_lineage_heals_a_deleted_catalog_from_the_artifacts(tmp_path, capsys):
    from pipelines.cli import main
    home = Home(tmp_path)
    recipe, plan = plan_for([ROWS])
    artifact = build_stage(home, plan, "rows", recipe)
    home.catalog_path.unlink()
    assert main(["lineage", artifact.fingerprint[:8], "--artifact-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"rows {artifact.fingerprint}" in out
    assert home.catalog().query("SELECT count(*) FROM quarantine") == [(3,)]
    assert Path(home.catalog().query("SELECT path FROM artifacts")[0][0]) == artifact.path
