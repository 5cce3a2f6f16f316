"""Lineage: what made an artifact, from its ancestors' fingerprints down to data rows per source."""

from __future__ import annotations

import duckdb

from engine.artifacts import Artifact, ArtifactStore
from engine.catalog import Catalog


def ancestry(store: ArtifactStore, artifact: Artifact) -> dict[str, str]:
    """{asset: fingerprint} for the artifact and every artifact it was made from."""
    seen, todo = {}, [artifact.fingerprint]
    while todo:
        found = store.find(todo.pop())
        if found is None or found.asset in seen:
            continue
        seen[found.asset] = found.fingerprint
        todo += store.manifest(found)["parents"]
    return seen


def build_lineage(store: ArtifactStore, catalog: Catalog, parents: list[Artifact], recipe: dict) -> dict:
    """The lineage.json an export carries: recipe, ancestor artifacts, and training rows per source."""
    artifacts: dict[str, str] = {}
    for parent in parents:
        artifacts.update(ancestry(store, parent))
    formatted = store.find(artifacts["formatted_data"]) if "formatted_data" in artifacts else None
    rows = {}
    if formatted is not None:
        query = "SELECT source, count(*) FROM read_parquet(?) GROUP BY source ORDER BY source"
        rows = dict(duckdb.execute(query, [str(formatted.path / "splits.parquet")]).fetchall())
    checks = catalog.checks_of(list(artifacts.values()))
    return {"recipe": recipe, "base_model": recipe["model"]["model_name_or_path"], "artifacts": artifacts,
            "data_rows_by_source": rows,
            "checks": {a: checks.get(fp, {}) for a, fp in artifacts.items()}}
