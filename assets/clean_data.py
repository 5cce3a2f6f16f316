"""clean_data: normalized, length-filtered, PII-scrubbed, exact and near duplicates removed."""

import dagster as dg

import engine.data.clean
import engine.data.dedup
from assets.common import blocking_checks, counts_table, emit
from engine.artifacts import Artifact, code_version
from engine.data.clean import clean
from engine.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, read_rows, write_rows
from pipelines.resources import Tuneline

CODE = code_version(engine.data.clean, engine.data.dedup)


def clean_to(out, raw: Artifact, recipe) -> dict:
    rows, quarantine, report = clean(read_rows(raw.path / "rows.parquet"), recipe.clean, list(raw.metrics["by_source"]))
    write_rows(rows, out / "rows.parquet", ROW_COLUMNS)
    write_rows(quarantine, out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return report


@dg.asset(group_name="data", code_version=CODE,
          check_specs=blocking_checks("clean_data", "no_exact_duplicates", "quarantine_ratio_within_bound"))
def clean_data(tuneline: Tuneline, raw_data: Artifact):
    """Rows fit to train on; every removed row is in the quarantine table with its reason."""
    recipe = tuneline.recipe()
    artifact = tuneline.build("clean_data", [raw_data], recipe.clean.model_dump(), CODE,
                              lambda out: clean_to(out, raw_data, recipe))
    if not artifact.cache_hit:
        tuneline.catalog().replace_rows("quarantine", artifact.fingerprint, artifact.path / "quarantine.parquet")
    m = artifact.metrics
    rows = read_rows(artifact.path / "rows.parquet")
    duplicates = len(rows) - len({(r["kind"], r["content_hash"]) for r in rows})
    ratio = m["quarantined"] / max(m["rows_in"], 1)
    bound = recipe.clean.max_quarantine_ratio
    yield from emit(tuneline, artifact, f"{m['rows_out']} of {m['rows_in']} rows kept",
                    {"rows_out": m["rows_out"], "quarantined": m["quarantined"],
                     "quarantine_by_reason": counts_table(m["quarantine_by_reason"]),
                     "pii_scrubbed": counts_table(m["pii_scrubbed"], "kind", "replaced")},
                    {"no_exact_duplicates": (duplicates == 0, f"{duplicates} exact duplicates left"),
                     "quarantine_ratio_within_bound": (ratio <= bound, f"quarantined {ratio:.1%}, bound {bound:.0%}")})
