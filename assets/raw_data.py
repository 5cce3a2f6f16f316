"""raw_data: every registered source in one normalized schema; malformed rows quarantined."""

from assets.stage_asset import counts_table, stage_asset
from engine.graph import RAW_DATA
from engine.store.tables import rows_by_source


def every_row_accounted(artifact, recipe) -> tuple[bool, str]:
    """Per source: the records its files hold (counted at build time apart from the readers, record_counts.py),
    capped by num_samples and data.max_samples, against the rows the written rows.parquet and quarantine.parquet
    hold."""
    written = rows_by_source(artifact.path, "rows")
    dropped = rows_by_source(artifact.path, "quarantine")
    verdicts = [source_verdict(name, counts, written[name], dropped[name], recipe.data.max_samples)
                for name, counts in artifact.metrics["by_source"].items()]
    strays = sorted((set(written) | set(dropped)) - set(artifact.metrics["by_source"]))
    verdicts += [(False, f"{name}: {written[name]} stored + {dropped[name]} quarantined rows of a source not read")
                 for name in strays]
    return all(ok for ok, _ in verdicts), "; ".join(detail for _, detail in verdicts) or "no source selected"


def source_verdict(name: str, counts: dict, stored: int, quarantined: int, max_samples: int | None
                   ) -> tuple[bool, str]:
    in_files = counts["records_in_files"]
    caps = {key: n for key, n in (("num_samples", counts["num_samples"]), ("max_samples", max_samples)) if n}
    expected = min([in_files, *caps.values()])
    capped = "".join(f", {key} {n}" for key, n in caps.items() if n < in_files)
    detail = (f"{name}: {in_files} records in its files{capped}, {stored} stored + {quarantined} quarantined "
              f"= {stored + quarantined}")
    if stored + quarantined == expected:
        return True, detail
    difference = stored + quarantined - expected
    return False, f"{detail}, expected {expected} ({abs(difference)} {'extra' if difference > 0 else 'missing'})"


raw_data = stage_asset(
    RAW_DATA, group="data",
    description="One row per example (source, row id, content hash, format, messages, chosen/rejected), in the catalog.",
    summary=lambda a, r: f"{a.metrics['rows']} rows, {a.metrics['quarantined']} quarantined",
    metadata=lambda a, r: {"rows": a.metrics["rows"], "quarantined": a.metrics["quarantined"], "by_source": counts_table(
        {k: f"{v['accepted']} / {v['rows_in']}" for k, v in a.metrics["by_source"].items()}, "source", "accepted / read"),
        # registered entries the recipe does not read (a stock dataset_info.json's hub and multimodal ones): listed, never an error
        "not_used": counts_table({u["name"]: u["reason"] for u in a.metrics.get("not_used", [])}, "dataset", "reason")},
    checks={"every_row_accounted": every_row_accounted})
