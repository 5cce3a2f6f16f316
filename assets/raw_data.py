"""raw_data: every registered source in one normalized schema; malformed rows quarantined."""

import dagster as dg

import engine.data.ingest
import engine.data.registry
from assets.common import blocking_checks, counts_table, emit
from engine.artifacts import code_version
from engine.data.ingest import ingest, source_identity
from engine.data.registry import recipe_sources
from engine.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, read_rows, write_rows
from pipelines.resources import Tuneline

CODE = code_version(engine.data.ingest, engine.data.registry)


def ingest_to(out, sources) -> dict:
    rows, quarantine, counts = ingest(sources)
    write_rows(rows, out / "rows.parquet", ROW_COLUMNS)
    write_rows(quarantine, out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return {"rows": len(rows), "quarantined": len(quarantine), "by_source": counts}


@dg.asset(group_name="data", code_version=CODE, check_specs=blocking_checks("raw_data", "every_row_accounted"))
def raw_data(tuneline: Tuneline):
    """One row per example (source, row id, content hash, format, messages, chosen/rejected), in catalog.duckdb."""
    recipe = tuneline.recipe()
    sources = recipe_sources(recipe.data)
    artifact = tuneline.build("raw_data", [], source_identity(sources), CODE, lambda out: ingest_to(out, sources))
    if not artifact.cache_hit:
        tuneline.catalog().replace_rows("raw_rows", artifact.fingerprint, artifact.path / "rows.parquet")
        tuneline.catalog().replace_rows("quarantine", artifact.fingerprint, artifact.path / "quarantine.parquet")
    m = artifact.metrics
    stored = len(read_rows(artifact.path / "rows.parquet")) + len(read_rows(artifact.path / "quarantine.parquet"))
    seen = sum(c["rows_in"] for c in m["by_source"].values())
    yield from emit(tuneline, artifact, f"{m['rows']} rows, {m['quarantined']} quarantined",
                    {"rows": m["rows"], "quarantined": m["quarantined"],
                     "by_source": counts_table({k: f"{v['accepted']} / {v['rows_in']}" for k, v in m["by_source"].items()},
                                               "source", "accepted / read")},
                    {"every_row_accounted": (stored == seen, f"{seen} rows read, {stored} stored or quarantined")})
