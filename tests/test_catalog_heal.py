"""The catalog heal counts rows: a row table whose rows differ in number from what was recorded (deleted or doubled
outside a transaction) is re-loaded from its artifact, exactly once."""

import duckdb
import pyarrow.parquet as pq
import pytest

from engine.build import build_stage
from engine.plan import make_plan
from engine.recipe import load_recipe
from engine.stage import Stage
from engine.store.catalog import CatalogError
from engine.store.home import Home
from engine.store.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, ShardWriter, write_rows

RAW, QUARANTINED = 7, 3


def raw_data_like(run):
    """A raw_data-shaped artifact: its rows and its quarantine, as Parquet tables the catalog loads."""
    write_rows([{"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "format": "alpaca", "kind": "sft",
                 "messages": "[]"} for i in range(RAW)], run.out / "rows.parquet", ROW_COLUMNS)
    write_rows([{"source": "s", "row_id": f"s:{RAW + i}", "stage": "ingest", "reason": "bad", "detail": "d"}
                for i in range(QUARANTINED)], run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return {}


RAW_LIKE = Stage("raw_like", entry=raw_data_like, tables={"raw_rows": "rows", "quarantine": "quarantine"})


def counts(home: Home, fingerprint: str) -> dict[str, int]:
    return {table: home.catalog().query(f"SELECT count(*) FROM {table} WHERE artifact = ?", [fingerprint])[0][0]
            for table in ("raw_rows", "quarantine")}


def distinct_ids(home: Home, table: str) -> int:
    return home.catalog().query(f"SELECT count(DISTINCT row_id) FROM {table}")[0][0]


@pytest.mark.parametrize("damage", [
    "DELETE FROM recorded",  # both row files forgotten
    "DELETE FROM recorded WHERE table_name = 'quarantine'",  # one lost
    "DELETE FROM artifacts",
])
@pytest.mark.parametrize("heal", ["cache_hit", "heal_from"])
def test_row_files_the_catalog_lost_are_recorded_again_exactly_once(tmp_path, damage, heal):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    plan = make_plan([RAW_LIKE], recipe)
    artifact = build_stage(home, plan, "raw_like", recipe)
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}
    home.catalog().query(damage)
    assert counts(home, artifact.fingerprint) != {"raw_rows": RAW, "quarantine": QUARANTINED}
    if heal == "cache_hit":
        assert build_stage(home, plan, "raw_like", recipe).cache_hit
    else:
        assert home.catalog().heal_from(home.store().manifests()) == 1
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}
    assert distinct_ids(home, "raw_rows") == RAW and distinct_ids(home, "quarantine") == QUARANTINED
    assert home.catalog().heal_from(home.store().manifests()) == 0  # all recorded again: nothing re-recorded


def test_the_catalog_holds_no_copy_of_the_rows(tmp_path):
    """catalog.duckdb does not grow with the raw rows: they are read from the artifact's Parquet."""
    sizes = {}
    for n in (200, 20_000):
        def many(run, n=n):
            write_rows([{"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}" * 8, "format": "alpaca",
                         "kind": "sft", "messages": "[" + "x" * 200 + "]"} for i in range(n)],
                       run.out / "rows.parquet", ROW_COLUMNS)
            write_rows([], run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
            return {}
        home, recipe = Home(tmp_path / str(n)), load_recipe("tiny")[0]
        stage = Stage("raw_like", entry=many, tables=RAW_LIKE.tables)
        artifact = build_stage(home, make_plan([stage], recipe), "raw_like", recipe)
        assert counts(home, artifact.fingerprint) == {"raw_rows": n, "quarantine": 0}
        sizes[n] = home.catalog_path.stat().st_size
    assert sizes[20_000] <= sizes[200] * 1.1, sizes


def test_a_missing_row_file_is_one_line_naming_it(tmp_path):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    artifact = build_stage(home, make_plan([RAW_LIKE], recipe), "raw_like", recipe)
    (artifact.path / "rows.parquet").unlink()
    with pytest.raises(CatalogError, match=r"raw_like .*raw_rows file .*rows.parquet is missing") as caught:
        counts(home, artifact.fingerprint)
    assert "\n" not in str(caught.value)


def test_a_moved_home_still_reads_its_rows(tmp_path):
    home, recipe = Home(tmp_path / "a"), load_recipe("tiny")[0]
    artifact = build_stage(home, make_plan([RAW_LIKE], recipe), "raw_like", recipe)
    (tmp_path / "a").rename(tmp_path / "b")
    assert counts(Home(tmp_path / "b"), artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}


def test_an_old_catalog_with_copied_rows_is_migrated_on_first_open(tmp_path):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    artifact = build_stage(home, make_plan([RAW_LIKE], recipe), "raw_like", recipe)
    with duckdb.connect(str(home.catalog_path)) as con:  # the catalog as the copying code left it
        con.execute("DELETE FROM recorded")
        con.execute("CREATE TABLE raw_rows (artifact VARCHAR, source VARCHAR, row_id VARCHAR)")
        con.execute("INSERT INTO recorded VALUES (?, 'raw_rows', 0, NULL)", [artifact.fingerprint])
    assert home.catalog().heal_from(home.store().manifests()) == 1
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}
    with duckdb.connect(str(home.catalog_path)) as con:
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'raw_rows'").fetchone() == (0,)


def test_retention_drops_the_catalog_records_of_pruned_artifacts(tmp_path):
    home = Home(tmp_path)
    stage = Stage("raw_like", entry=raw_data_like, tables=RAW_LIKE.tables, keys=("sft.learning_rate",))

    def build(lr):
        recipe = load_recipe("tiny", {"sft.learning_rate": lr, "retention.keep_last": 1})[0]
        return build_stage(home, make_plan([stage], recipe), "raw_like", recipe)
    first, second = build(1e-3), build(2e-3)
    assert not first.path.exists()
    for table, key in (("artifacts", "fingerprint"), ("recorded", "artifact"), ("check_results", "artifact")):
        assert home.catalog().query(f"SELECT count(*) FROM {table} WHERE {key} = ?", [first.fingerprint]) == [(0,)]
    assert home.catalog().query("SELECT DISTINCT artifact FROM raw_rows") == [(second.fingerprint,)]


def test_an_intact_catalog_reloads_nothing(tmp_path):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    plan = make_plan([RAW_LIKE], recipe)
    build_stage(home, plan, "raw_like", recipe)
    assert home.catalog().heal_from(home.store().manifests()) == 0


def test_an_empty_table_recorded_empty_is_not_a_gap(tmp_path):
    def no_quarantine(run):
        raw_data_like(run)
        write_rows([], run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
        return {}
    stage = Stage("raw_like", entry=no_quarantine, tables=RAW_LIKE.tables)
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    build_stage(home, make_plan([stage], recipe), "raw_like", recipe)
    assert home.catalog().heal_from(home.store().manifests()) == 0


def sharded_raw_like(run):
    """raw_data_like's rows as raw_data writes them now: shards of 3 rows."""
    with ShardWriter(run.out, "rows", ROW_COLUMNS, shard_rows=3) as rows:
        rows.add_all({"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "format": "alpaca", "kind": "sft",
                      "messages": "[]"} for i in range(RAW))
    with ShardWriter(run.out, "quarantine", QUARANTINE_COLUMNS, shard_rows=3) as quarantine:
        quarantine.add_all({"source": "s", "row_id": f"s:{RAW + i}", "stage": "ingest", "reason": "bad",
                            "detail": "d"} for i in range(QUARANTINED))
    return {}


def test_sharded_tables_are_recorded_shard_by_shard_and_read_whole(tmp_path):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    sharded = Stage("raw_like", entry=sharded_raw_like, tables=RAW_LIKE.tables)
    artifact = build_stage(home, make_plan([sharded], recipe), "raw_like", recipe)
    assert home.store().manifest(artifact)["tables"] == {"raw_rows": ["rows-00000.parquet", "rows-00001.parquet",
                                                        "rows-00002.parquet"],
                                           "quarantine": ["quarantine-00000.parquet"]}
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}
    assert home.catalog().query("SELECT row_id FROM raw_rows") == [(f"s:{i}",) for i in range(RAW)]  # in row order
    (artifact.path / "rows-00001.parquet").unlink()
    with pytest.raises(CatalogError, match=r"raw_rows file .*rows-00001.parquet is missing"):
        counts(home, artifact.fingerprint)


def test_a_catalog_record_of_one_file_from_before_shards_is_still_read(tmp_path):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    artifact = build_stage(home, make_plan([RAW_LIKE], recipe), "raw_like", recipe)  # one rows.parquet
    with duckdb.connect(str(home.catalog_path)) as con:  # recorded.file as it was: the file's name, not a list
        con.execute("UPDATE recorded SET file = table_name")
        con.execute("UPDATE recorded SET file = 'rows.parquet' WHERE table_name = 'raw_rows'")
        con.execute("UPDATE recorded SET file = 'quarantine.parquet' WHERE table_name = 'quarantine'")
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}


def test_a_query_about_some_artifacts_opens_only_their_files(tmp_path):
    home = Home(tmp_path)
    stage = Stage("raw_like", entry=raw_data_like, tables=RAW_LIKE.tables, keys=("sft.learning_rate",))
    built = [build_stage(home, make_plan([stage], recipe), "raw_like", recipe)
             for recipe in (load_recipe("tiny", {"sft.learning_rate": lr})[0] for lr in (1e-3, 2e-3))]
    (built[0].path / "rows.parquet").unlink()  # a query over every artifact would stop here
    sql = "SELECT count(*) FROM raw_rows WHERE artifact = ?"
    assert home.catalog().query(sql, [built[1].fingerprint], artifacts=[built[1].fingerprint]) == [(RAW,)]
    with pytest.raises(CatalogError, match="rows.parquet is missing"):
        home.catalog().query(sql, [built[1].fingerprint])


def test_a_query_written_to_parquet_gives_the_rows_of_a_whole_one(tmp_path):
    """query_to_parquet (what `tuneline lineage --rows` writes a corpus's rows from) gives query's rows, in its order,
    written `batch_rows` at a time."""
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    build_stage(home, make_plan([Stage("raw_like", entry=sharded_raw_like, tables=RAW_LIKE.tables)], recipe),
                "raw_like", recipe)
    sql = "SELECT row_id, source FROM raw_rows ORDER BY row_id DESC"
    home.catalog().query_to_parquet(sql, None, None, tmp_path / "rows.parquet", batch_rows=3)
    written = pq.ParquetFile(tmp_path / "rows.parquet")
    assert written.metadata.num_row_groups == 3
    assert [tuple(r.values()) for r in written.read().to_pylist()] == home.catalog().query(sql)
