"""The catalog heal counts rows: a row table whose rows differ in number from what was recorded (deleted or doubled
outside a transaction) is re-loaded from its artifact, exactly once."""

import pytest

from engine.build import build_stage
from engine.plan import make_plan
from engine.recipe import load_recipe
from engine.stage import Stage
from engine.store.home import Home
from engine.store.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, write_rows

RAW, QUARANTINED = 7, 3


def raw_data_like(run):
    """A raw_data-shaped artifact: its rows and its quarantine, as Parquet tables the catalog loads."""
    write_rows([{"source": "s", "row_id": f"s:{i}", "content_hash": f"h{i}", "format": "alpaca", "kind": "sft",
                 "messages": "[]"} for i in range(RAW)], run.out / "rows.parquet", ROW_COLUMNS)
    write_rows([{"source": "s", "row_id": f"s:{RAW + i}", "stage": "ingest", "reason": "bad", "detail": "d"}
                for i in range(QUARANTINED)], run.out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return {}


RAW_LIKE = Stage("raw_like", entry=raw_data_like, tables={"raw_rows": "rows.parquet", "quarantine": "quarantine.parquet"})


def counts(home: Home, fingerprint: str) -> dict[str, int]:
    return {table: home.catalog().query(f"SELECT count(*) FROM {table} WHERE artifact = ?", [fingerprint])[0][0]
            for table in ("raw_rows", "quarantine")}


def distinct_ids(home: Home, table: str) -> int:
    return home.catalog().query(f"SELECT count(DISTINCT row_id) FROM {table}")[0][0]


@pytest.mark.parametrize("damage", [
    "DELETE FROM raw_rows",  # what left raw_rows at 0 after a rerun
    "DELETE FROM raw_rows WHERE row_id IN ('s:0', 's:1')",  # some lost
    "DELETE FROM quarantine",
    "INSERT INTO raw_rows SELECT * FROM raw_rows WHERE row_id = 's:3'",  # one doubled
])
@pytest.mark.parametrize("heal", ["cache_hit", "heal_from"])
def test_rows_lost_or_doubled_outside_a_transaction_are_reloaded_exactly_once(tmp_path, damage, heal):
    home, recipe = Home(tmp_path), load_recipe("tiny")[0]
    plan = make_plan([RAW_LIKE], recipe)
    artifact = build_stage(home, plan, "raw_like", recipe)
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}
    home.catalog().query(damage)  # the recorded counts still say 7 and 3
    assert counts(home, artifact.fingerprint) != {"raw_rows": RAW, "quarantine": QUARANTINED}
    if heal == "cache_hit":
        assert build_stage(home, plan, "raw_like", recipe).cache_hit
    else:
        assert home.catalog().heal_from(home.store().manifests()) == 1
    assert counts(home, artifact.fingerprint) == {"raw_rows": RAW, "quarantine": QUARANTINED}
    assert distinct_ids(home, "raw_rows") == RAW and distinct_ids(home, "quarantine") == QUARANTINED
    assert home.catalog().heal_from(home.store().manifests()) == 0  # counts agree again: nothing re-recorded


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
