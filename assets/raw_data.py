"""raw_data: every registered source in one normalized schema; malformed rows quarantined."""

import dagster as dg

import engine.data.ingest
import engine.data.registry
from assets.common import blocking_checks, counts_table, emit
from engine.artifacts import code_version
from engine.data.ingest import ingest_stream, source_identity
from engine.data.registry import recipe_sources
from engine.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, RowWriter, read_rows
from pipelines.resources import Tuneline

CODE = code_version(engine.data.ingest, engine.data.registry)


def ingest_to(out, sources) -> dict:
    """Stream every source into rows.parquet and quarantine.parquet; returns counts per source."""
    counts = {}
    with RowWriter(out / "rows.parquet", ROW_COLUMNS) as rows, \
            RowWriter(out / "quarantine.parquet", QUARANTINE_COLUMNS) as quarantine:
        for name, (entry, path) in sources.items():
            before = (rows.count, quarantine.count)
            for good, item in ingest_stream(name, entry, path):
                (rows if good else quarantine).add(item)
            accepted, rejected = rows.count - before[0], quarantine.count - before[1]
            counts[name] = {"rows_in": accepted + rejected, "accepted": accepted, "quarantined": rejected}
    return {"rows": rows.count, "quarantined": quarantine.count, "by_source": counts}


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
