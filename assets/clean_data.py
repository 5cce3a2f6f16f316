"""clean_data: the recipe's cleaning steps (normalize, strip HTML, length, repetition, PII, blocklist, dedup)."""

import dagster as dg

from assets.ray_session import ray_session
from assets.stage_asset import counts_table, stage_asset
from engine.data.written_rows import exact_duplicates
from engine.graph import CLEAN_DATA
from engine.store.tables import first_rows, rows_by_source, table_rows


def every_row_accounted(artifact, recipe) -> tuple[bool, str]:
    """Per source: rows in (counted from raw_data's rows as they were read) == rows in the written rows.parquet +
    rows in the written quarantine.parquet."""
    kept = rows_by_source(artifact.path, "rows")
    dropped = rows_by_source(artifact.path, "quarantine")
    rows_in = artifact.metrics["rows_in_by_source"]
    accounted = {s: (n == kept[s] + dropped[s], f"{n} in, {kept[s]} kept, {dropped[s]} quarantined")
                 for s, n in rows_in.items()}
    accounted |= {s: (False, f"0 in, {kept[s]} kept, {dropped[s]} quarantined (a source not read)")
                  for s in sorted((set(kept) | set(dropped)) - set(rows_in))}
    return all(ok for ok, _ in accounted.values()), "; ".join(f"{s}: {d}" for s, (_, d) in accounted.items())


def no_exact_duplicates(artifact, recipe) -> tuple[bool, str]:
    """No two written rows of a kind with the same texts: each row's hash computed again from its written texts
    (not the content_hash column cleaning wrote), grouped within data.memory_gb."""
    rows, count, shown = exact_duplicates(artifact.path, recipe.data.memory_gb)
    listed = f" ({', '.join(shown)}{', ...' if count > len(shown) else ''})" if count else ""
    return not count, f"{count} exact duplicates among {rows} written rows{listed}"


def quarantine_ratio_within_bound(artifact, recipe) -> tuple[bool, str]:
    """Rows in the written quarantine.parquet over the rows cleaning read, within clean.max_quarantine_ratio."""
    rows_in, bound = artifact.metrics["rows_in"], recipe.clean.max_quarantine_ratio
    quarantined = sum(rows_by_source(artifact.path, "quarantine").values())
    ratio = quarantined / max(rows_in, 1)
    return ratio <= bound, f"quarantined {ratio:.1%} ({quarantined} of {rows_in} rows), bound {bound:.0%}"


def source_losses(rows_in: dict[str, int], rows_out: dict[str, int]) -> dict[str, tuple[int, int, float]]:
    """Per source: rows in, rows out, share of its rows cleaning removed (0.0 for a selected source with no rows:
    it had nothing to lose)."""
    return {s: (n, rows_out.get(s, 0), (n - rows_out.get(s, 0)) / n if n else 0.0) for s, n in rows_in.items()}


def every_source_within_loss_bound(artifact, recipe) -> tuple[bool, str, dict]:
    """No source loses more than clean.max_source_loss_ratio of its rows (rows in as cleaning read them, rows out
    as the written rows.parquet holds them); the result's metadata lists every source's loss."""
    bound = recipe.clean.max_source_loss_ratio
    losses = source_losses(artifact.metrics["rows_in_by_source"], rows_by_source(artifact.path, "rows"))
    over = [f"{s}: lost {lost:.1%} ({n_in} in, {n_out} out), bound {bound:.1%}, over by {lost - bound:.1%}"
            for s, (n_in, n_out, lost) in losses.items() if lost > bound]
    worst = max(losses, key=lambda s: losses[s][2], default=None)
    within = (f"every source within {bound:.1%}; most lost: {worst} {losses[worst][2]:.1%}" if worst
              else "no source selected")
    return not over, "; ".join(over) or within, {"source_losses": loss_table(losses, bound)}


def loss_table(losses: dict[str, tuple[int, int, float]], bound: float) -> dg.MetadataValue:
    columns = [dg.TableColumn("source"), dg.TableColumn("rows_in", "int"), dg.TableColumn("rows_out", "int"),
               dg.TableColumn("share_lost", "float"), dg.TableColumn("within_bound", "bool")]
    records = [dg.TableRecord({"source": s, "rows_in": n_in, "rows_out": n_out, "share_lost": round(lost, 4),
                               "within_bound": lost <= bound}) for s, (n_in, n_out, lost) in losses.items()]
    return dg.MetadataValue.table(records, dg.TableSchema(columns))


SHOWN_CLUSTERS = 5  # duplicate clusters the report shows (a corpus can have millions)


def data_report(m: dict, clusters: list[dict], total_clusters: int) -> str:
    """The cleaning report a person reads in the UI: per source, per step, top reasons, some clusters."""
    sources = "\n".join(f"| {s} | {n} | {m['rows_out_by_source'].get(s, 0)} |" for s, n in m["rows_in_by_source"].items())
    steps = "\n".join(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {s['modified']} | "
                      f"{', '.join(f'{r} {n}' for r, n in s['removed'].items()) or '-'} |" for s in m["steps"])
    details = "\n".join(f"| {d} | {n} |" for d, n in m["top_quarantine_details"])
    shown = "\n".join(f"| {c['cluster_id']} | {c['kind']} | {c['kept_row_id']} | {c['removed_row_id']} | "
                      f"{c['similarity']} |" for c in clusters)
    return (f"### Rows per source\n| source | in | out |\n|---|---|---|\n{sources}\n\n"
            f"### Steps, in order\n| step | in | out | rewritten | removed |\n|---|---|---|---|---|\n{steps}\n\n"
            f"### Most common quarantine details\n| detail | rows |\n|---|---|\n{details}\n\n"
            f"### Duplicate clusters (first {len(clusters)} of {total_clusters})\n"
            f"| cluster | kind | kept | removed | similarity |\n|---|---|---|---|---|\n{shown}\n")


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    return {"rows_out": m["rows_out"], "quarantined": m["quarantined"],
            "data_report": dg.MetadataValue.md(data_report(m, first_rows(artifact.path, "clusters", SHOWN_CLUSTERS),
                                                            table_rows(artifact.path, "clusters"))),
            "pii_scrubbed": counts_table(m["pii_scrubbed"], "kind", "replaced")}


clean_data = stage_asset(
    CLEAN_DATA, group="data",
    description="Rows fit to train on; every removed row is in the quarantine table with its step, reason and detail.",
    summary=lambda a, r: f"{a.metrics['rows_out']} of {a.metrics['rows_in']} rows kept", metadata=metadata,
    checks={"every_row_accounted": every_row_accounted, "no_exact_duplicates": no_exact_duplicates,
            "quarantine_ratio_within_bound": quarantine_ratio_within_bound,
            "every_source_within_loss_bound": every_source_within_loss_bound}, session=ray_session)
