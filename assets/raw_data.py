"""raw_data: every registered source in one normalized schema; malformed rows quarantined."""

from assets.stage_asset import counts_table, stage_asset
from engine.graph import RAW_DATA
from engine.store.tables import read_rows

def every_row_accounted(artifact, recipe) -> tuple[bool, str]:
    stored = len(read_rows(artifact.path / "rows.parquet")) + len(read_rows(artifact.path / "quarantine.parquet"))
    seen = sum(c["rows_in"] for c in artifact.metrics["by_source"].values())
    return stored == seen, f"{seen} rows read, {stored} stored or quarantined"


raw_data = stage_asset(
    RAW_DATA, group="data",
    description="One row per example (source, row id, content hash, format, messages, chosen/rejected), in the catalog.",
    summary=lambda a, r: f"{a.metrics['rows']} rows, {a.metrics['quarantined']} quarantined",
    metadata=lambda a, r: {"rows": a.metrics["rows"], "quarantined": a.metrics["quarantined"], "by_source": counts_table(
        {k: f"{v['accepted']} / {v['rows_in']}" for k, v in a.metrics["by_source"].items()}, "source", "accepted / read"),
        # registered entries the recipe does not read (a stock dataset_info.json's hub and multimodal ones): listed, never an error
        "not_used": counts_table({u["name"]: u["reason"] for u in a.metrics.get("not_used", [])}, "dataset", "reason")},
    checks={"every_row_accounted": every_row_accounted})
