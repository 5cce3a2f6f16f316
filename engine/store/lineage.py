"""Lineage: what made an artifact, from an export down to raw sources, read from the DuckDB catalog."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from engine.store.catalog import Catalog
from engine.errors import TunelineError
from engine.store.tables import parquet_batches

ANCESTRY_SQL = """
WITH RECURSIVE tree(fingerprint, depth) AS (
    SELECT fingerprint, 0 FROM artifacts WHERE fingerprint = ?
    UNION
    SELECT p.parent, t.depth + 1
    FROM tree t JOIN (SELECT fingerprint, unnest(CAST(parents AS VARCHAR[])) AS parent FROM artifacts) p
      ON p.fingerprint = t.fingerprint)
SELECT a.fingerprint, a.asset, a.path, a.created_at, a.code_version, a.config, a.metrics, a.parents, a.versions,
       min(t.depth) AS depth
FROM tree t JOIN artifacts a USING (fingerprint)
GROUP BY ALL ORDER BY depth, a.asset
"""


class LineageError(TunelineError):
    pass


def resolve(catalog: Catalog, artifact: str) -> str:
    """A fingerprint (or unique prefix), or an artifact directory, -> the full fingerprint."""
    key = Path(artifact).name if Path(artifact).is_dir() else artifact
    hits = [r[0] for r in catalog.query("SELECT fingerprint FROM artifacts WHERE starts_with(fingerprint, ?)", [key])]
    if len(hits) != 1:
        problem = "matches several artifacts" if hits else "is not a known artifact"
        raise LineageError(f"{artifact!r} {problem} in the catalog {catalog.path} "
                           "(expected an artifact directory or a fingerprint from `tuneline run`)")
    return hits[0]


def ancestry(catalog: Catalog, fingerprint: str) -> list[dict]:
    """The artifact and every artifact it was made from, nearest first."""
    columns = ["fingerprint", "asset", "path", "created_at", "code_version", "config", "metrics", "parents",
               "versions", "depth"]
    rows = [dict(zip(columns, r, strict=True)) for r in catalog.query(ANCESTRY_SQL, [fingerprint])]
    for row in rows:
        for key in ("config", "metrics", "parents", "versions"):
            row[key] = json.loads(row[key]) if row[key] else None
    return rows


def data_counts(catalog: Catalog, nodes: list[dict]) -> dict:
    """Rows per source at each data stage among the ancestors: read, quarantined (by reason), trained on."""
    by_asset = {n["asset"]: n["fingerprint"] for n in nodes}
    counts: dict[str, dict] = {}
    if "raw_data" in by_asset:
        for source, n in catalog.query("SELECT source, count(*) FROM raw_rows WHERE artifact = ? GROUP BY 1",
                                       [by_asset["raw_data"]], artifacts=[by_asset["raw_data"]]):
            counts.setdefault(source, {})["raw_rows"] = n
    stages = [by_asset[a] for a in ("raw_data", "clean_data", "formatted_data") if a in by_asset]
    for source, reason, n in catalog.query("SELECT source, reason, count(*) FROM quarantine "
                                           "WHERE list_contains(?, artifact) GROUP BY 1, 2", [stages],
                                           artifacts=stages):
        counts.setdefault(source, {}).setdefault("quarantined", {})[reason] = n
    if "formatted_data" in by_asset:
        for source, split, n in catalog.query("SELECT source, split, count(*) FROM split_rows WHERE artifact = ? "
                                              "GROUP BY 1, 2", [by_asset["formatted_data"]],
                                              artifacts=[by_asset["formatted_data"]]):
            counts.setdefault(source, {})[f"{split}_rows"] = n
    return counts


def lineage(catalog: Catalog, artifact: str) -> dict:
    """The whole record of what made `artifact`: ancestors, their checks, and data rows per source."""
    nodes = ancestry(catalog, resolve(catalog, artifact))
    checks = catalog.checks_of([n["fingerprint"] for n in nodes])
    for node in nodes:
        node["checks"] = checks.get(node["fingerprint"], {})
    return {"artifact": nodes[0], "ancestors": nodes[1:], "data": data_counts(catalog, nodes)}


TRAINING_ROWS_SQL = """
SELECT s.source, s.row_id, r.content_hash AS raw_content_hash, s.content_hash AS clean_content_hash, s.view, s.split
FROM split_rows s LEFT JOIN raw_rows r ON r.artifact = ? AND r.row_id = s.row_id
WHERE s.artifact = ? ORDER BY s.source, s.row_id
"""


def write_training_rows(catalog: Catalog, artifact: str, out: Path) -> int:
    """Write the rows that trained `artifact` as CSV (source, row id, raw and cleaned content hash, view, split).

    Returns how many rows were written. Raises LineageError if no formatted data leads to the artifact.
    """
    nodes = {n["asset"]: n["fingerprint"] for n in ancestry(catalog, resolve(catalog, artifact))}
    if "formatted_data" not in nodes:
        raise LineageError(f"{artifact!r} was not made from formatted data, so no training rows lead to it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:  # `out` whole or untouched
        found, written = Path(tmp) / "rows.parquet", Path(tmp) / "rows.csv"
        catalog.query_to_parquet(TRAINING_ROWS_SQL, [nodes.get("raw_data"), nodes["formatted_data"]],
                                 [f for f in (nodes.get("raw_data"), nodes["formatted_data"]) if f], found)
        count = 0
        with written.open("w") as handle:
            handle.write("source,row_id,raw_content_hash,clean_content_hash,view,split\n")
            for batch in parquet_batches([found], 10_000):
                handle.writelines(",".join(map(str, row.values())) + "\n" for row in batch.to_pylist())
                count += batch.num_rows
        os.replace(written, out)
    return count


def verdict(passed: bool | None) -> str:
    """A recorded check as a person reads it (None: not evaluated, the recipe turns off what it judges)."""
    return "not configured" if passed is None else "ok" if passed else "FAILED"


def render(record: dict) -> str:
    """The lineage as an indented tree, export first, down to the raw sources with their row counts."""
    nodes = [record["artifact"], *record["ancestors"]]
    by_fp = {n["fingerprint"]: n for n in nodes}
    lines: list[str] = []
    shown: set[str] = set()

    def walk(node: dict, indent: str) -> None:
        if node["fingerprint"] in shown:  # a DAG, not a tree: each artifact is described once
            lines.append(f"{indent}{node['asset']} {node['fingerprint']}  (above)")
            return
        shown.add(node["fingerprint"])
        checks = ", ".join(f"{k} {verdict(v)}" for k, v in node["checks"].items())
        lines.append(f"{indent}{node['asset']} {node['fingerprint']}  {node['created_at']}  {checks}")
        lines.append(f"{indent}  {node['path']}")
        for parent in node["parents"] or []:
            if parent in by_fp:
                walk(by_fp[parent], indent + "  ")
    walk(nodes[0], "")
    lines.append("data sources:")
    for source, counts in sorted(record["data"].items()):
        quarantined = ", ".join(f"{r} {n}" for r, n in sorted(counts.get("quarantined", {}).items())) or "none"
        lines.append(f"  {source}: {counts.get('raw_rows', 0)} raw rows, train {counts.get('train_rows', 0)}, "
                     f"eval {counts.get('eval_rows', 0)}; quarantined: {quarantined}")
    return "\n".join(lines)


def published_files(path: str) -> dict | None:
    """The files (size, sha256) an artifact's manifest lists; None if it predates digests or is gone."""
    manifest = Path(path) / "manifest.json"
    return json.loads(manifest.read_text()).get("files") if manifest.is_file() else None


def export_lineage(catalog: Catalog, parents: list[str]) -> dict:
    """What an export carries in lineage.json: every ancestor artifact with the recipe keys it read, its files
    (size, sha256), its checks as recorded when the export was made, and rows per source."""
    nodes = list({n["fingerprint"]: n for p in parents for n in ancestry(catalog, p)}.values())
    missing = [p for p in parents if p not in {n["fingerprint"] for n in nodes}]
    if missing:
        raise LineageError(f"the catalog {catalog.path} does not know the artifacts {missing} this export is made "
                           "from; their lineage cannot be written")
    checks = catalog.checks_of([n["fingerprint"] for n in nodes])
    base = next((n for n in nodes if n["asset"] == "base_model"), {"config": {}})
    return {"base_model": (base["config"] or {}).get("model.model_name_or_path"),
            "artifacts": {n["asset"]: {"fingerprint": n["fingerprint"], "path": n["path"], "config": n["config"],
                                       "versions": n["versions"], "checks": checks.get(n["fingerprint"], {}),
                                       "files": published_files(n["path"])}
                          for n in nodes},
            "data": data_counts(catalog, nodes)}
