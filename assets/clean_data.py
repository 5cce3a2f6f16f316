"""clean_data: the recipe's cleaning steps (normalize, strip HTML, length, repetition, PII, blocklist, dedup)."""

from collections import Counter

import dagster as dg

import engine.data.clean
import engine.data.dedup
from assets.common import blocking_checks, counts_table, emit
from engine.artifacts import Artifact, code_version
from engine.data.clean import clean
from engine.models import load_tokenizer, model_dir
from engine.tables import CLUSTER_COLUMNS, QUARANTINE_COLUMNS, ROW_COLUMNS, read_rows, write_rows
from pipelines.resources import Tuneline

CODE = code_version(engine.data.clean, engine.data.dedup)


def token_counter(base: Artifact):
    tokenizer = load_tokenizer(model_dir(base.path))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def clean_to(out, raw: Artifact, base: Artifact, recipe) -> dict:
    count_tokens = token_counter(base) if recipe.clean.counts_tokens() else None
    rows, quarantine, clusters, report = clean(read_rows(raw.path / "rows.parquet"), recipe.clean,
                                               list(raw.metrics["by_source"]), count_tokens)
    write_rows(rows, out / "rows.parquet", ROW_COLUMNS)
    write_rows(quarantine, out / "quarantine.parquet", QUARANTINE_COLUMNS)
    write_rows(clusters, out / "clusters.parquet", CLUSTER_COLUMNS)
    return report


def accounted_by_source(rows: list[dict], quarantine: list[dict], rows_in: dict[str, int]) -> dict[str, tuple]:
    """Per source: rows in == rows kept + rows quarantined."""
    kept, dropped = Counter(r["source"] for r in rows), Counter(q["source"] for q in quarantine)
    return {s: (n == kept[s] + dropped[s], f"{n} in, {kept[s]} kept, {dropped[s]} quarantined") for s, n in rows_in.items()}


@dg.asset(group_name="data", code_version=CODE, check_specs=blocking_checks(
    "clean_data", "every_row_accounted", "no_exact_duplicates", "quarantine_ratio_within_bound"))
def clean_data(tuneline: Tuneline, raw_data: Artifact, base_model: Artifact):
    """Rows fit to train on; every removed row is in the quarantine table with its step, reason and detail."""
    recipe = tuneline.recipe()
    # the tokenizer is an input only when token limits are set: otherwise a new base model re-cleans nothing
    parents = [raw_data, base_model] if recipe.clean.counts_tokens() else [raw_data]
    artifact = tuneline.build("clean_data", parents, recipe.clean.model_dump(), CODE,
                              lambda out: clean_to(out, raw_data, base_model, recipe))
    if not artifact.cache_hit:
        catalog = tuneline.catalog()
        catalog.replace_rows("quarantine", artifact.fingerprint, artifact.path / "quarantine.parquet")
        catalog.replace_rows("duplicate_clusters", artifact.fingerprint, artifact.path / "clusters.parquet")
    m = artifact.metrics
    rows, quarantine = read_rows(artifact.path / "rows.parquet"), read_rows(artifact.path / "quarantine.parquet")
    accounted = accounted_by_source(rows, quarantine, m["rows_in_by_source"])
    duplicates = len(rows) - len({(r["kind"], r["content_hash"]) for r in rows})
    ratio, bound = m["quarantined"] / max(m["rows_in"], 1), recipe.clean.max_quarantine_ratio
    yield from emit(tuneline, artifact, f"{m['rows_out']} of {m['rows_in']} rows kept", {
        "rows_out": m["rows_out"], "quarantined": m["quarantined"],
        "data_report": dg.MetadataValue.md(data_report(m, read_rows(artifact.path / "clusters.parquet"))),
        "quarantine_by_reason": counts_table(m["quarantine_by_reason"]),
        "pii_scrubbed": counts_table(m["pii_scrubbed"], "kind", "replaced")}, {
        "every_row_accounted": (all(ok for ok, _ in accounted.values()),
                                "; ".join(f"{s}: {detail}" for s, (_, detail) in accounted.items())),
        "no_exact_duplicates": (duplicates == 0, f"{duplicates} exact duplicates left"),
        "quarantine_ratio_within_bound": (ratio <= bound, f"quarantined {ratio:.1%}, bound {bound:.0%}")})


def data_report(m: dict, clusters: list[dict], sample: int = 5) -> str:
    """The cleaning report a person reads in the UI: per source, per step, top reasons, some clusters."""
    sources = "\n".join(f"| {s} | {n} | {m['rows_out_by_source'].get(s, 0)} |" for s, n in m["rows_in_by_source"].items())
    steps = "\n".join(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {s['modified']} | "
                      f"{', '.join(f'{r} {n}' for r, n in s['removed'].items()) or '-'} |" for s in m["steps"])
    details = "\n".join(f"| {d} | {n} |" for d, n in m["top_quarantine_details"])
    shown = "\n".join(f"| {c['cluster_id']} | {c['kind']} | {c['kept_row_id']} | {c['removed_row_id']} | "
                      f"{c['similarity']} |" for c in clusters[:sample])
    return (f"### Rows per source\n| source | in | out |\n|---|---|---|\n{sources}\n\n"
            f"### Steps, in order\n| step | in | out | rewritten | removed |\n|---|---|---|---|---|\n{steps}\n\n"
            f"### Most common quarantine details\n| detail | rows |\n|---|---|\n{details}\n\n"
            f"### Duplicate clusters (first {sample} of {len(clusters)})\n"
            f"| cluster | kind | kept | removed | similarity |\n|---|---|---|---|---|\n{shown}\n")
