"""The DuckDB catalog (catalog.duckdb under the artifact root): artifacts, data rows, quarantine, checks.

The catalog is derived data. Every artifact's manifest names the row tables it fills, so a missing, deleted
or corrupted catalog is re-recorded from the artifacts themselves; every write is idempotent.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

# check_results.passed NULL: not evaluated, what the check judges is off under the recipe (detail "not configured: ...")
SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    fingerprint VARCHAR PRIMARY KEY, asset VARCHAR, path VARCHAR, created_at VARCHAR,
    code_version VARCHAR, config JSON, metrics JSON, parents JSON, versions JSON);
CREATE TABLE IF NOT EXISTS recorded (
    artifact VARCHAR, table_name VARCHAR, row_count BIGINT, PRIMARY KEY (artifact, table_name));
CREATE TABLE IF NOT EXISTS raw_rows (
    artifact VARCHAR, source VARCHAR, row_id VARCHAR, content_hash VARCHAR, format VARCHAR,
    kind VARCHAR, messages JSON, chosen VARCHAR, rejected VARCHAR, tools JSON, label VARCHAR);
CREATE TABLE IF NOT EXISTS quarantine (
    artifact VARCHAR, source VARCHAR, row_id VARCHAR, stage VARCHAR, reason VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS check_results (
    artifact VARCHAR, check_name VARCHAR, passed BOOLEAN, detail VARCHAR, PRIMARY KEY (artifact, check_name));
CREATE TABLE IF NOT EXISTS duplicate_clusters (
    artifact VARCHAR, cluster_id VARCHAR, kind VARCHAR, kept_row_id VARCHAR, removed_row_id VARCHAR,
    similarity DOUBLE);
CREATE TABLE IF NOT EXISTS rewrites (
    artifact VARCHAR, source VARCHAR, row_id VARCHAR, step VARCHAR, field VARCHAR, before VARCHAR, after VARCHAR);
CREATE TABLE IF NOT EXISTS split_rows (
    artifact VARCHAR, source VARCHAR, row_id VARCHAR, content_hash VARCHAR, view VARCHAR, split VARCHAR);
"""
ROW_TABLES = ("raw_rows", "quarantine", "duplicate_clusters", "rewrites", "split_rows")


def parents_of(manifest: dict) -> list[str]:
    """Parent fingerprints, from a manifest's {name: fingerprint} (or an old manifest's plain list)."""
    parents = manifest.get("parents") or []
    return sorted(parents.values()) if isinstance(parents, dict) else list(parents)


class Catalog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits for another process's write lock instead of failing, and sets a
        corrupted catalog aside (it is re-recorded from the artifacts) instead of failing the run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(240):
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    self.set_aside(exc)
                elif attempt == 239:
                    raise
                time.sleep(0.25)
            except duckdb.Error as exc:  # not a database, or a damaged one
                self.set_aside(exc)
        try:
            con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    def set_aside(self, problem: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            if path.exists():
                path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
        print(f"tuneline: the catalog {self.path} could not be opened ({str(problem).splitlines()[0]}); it was set "
              "aside and is re-recorded from the artifacts", flush=True)

    def record_artifact(self, manifest: dict, path: Path) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [manifest["fingerprint"], manifest["asset"], str(path), manifest["created_at"],
                 manifest["code_version"], json.dumps(manifest["config"], default=str),
                 json.dumps(manifest["metrics"], default=str), json.dumps(parents_of(manifest)),
                 json.dumps(manifest.get("versions", {}))],
            )

    def ensure_recorded(self, manifest: dict, path: Path) -> bool:
        """Record an artifact and its row tables unless the catalog already holds all of them. Returns whether
        anything was (re-)recorded."""
        return self.record_missing([(manifest, path)]) > 0

    def heal_from(self, manifests: list[dict]) -> int:
        """Re-record every artifact (and its rows) the catalog lacks. Returns how many were re-recorded."""
        return self.record_missing([(m, Path(m["path"])) for m in manifests])

    def record_missing(self, artifacts: list[tuple[dict, Path]]) -> int:
        """Record each (manifest, artifact path) and its row tables that the catalog lacks, all looked up over one
        connection (a connection costs ~10 ms; every stage looks up all its ancestors). Returns how many."""
        with self.connect() as con:
            gaps = [(manifest, path, *self.gap(con, manifest)) for manifest, path in artifacts]
        recorded = 0
        for manifest, path, known, missing in gaps:
            if known and not missing:
                continue
            recorded += 1
            if not known:
                self.record_artifact(manifest, path)
            for table in missing:
                self.replace_rows(table, manifest["fingerprint"], path / manifest["tables"][table])
        return recorded

    @staticmethod
    def gap(con, manifest: dict) -> tuple[bool, list[str]]:
        """(whether the artifact is recorded, which of its row tables are not, or hold another number of rows than
        was recorded: rows deleted or doubled outside a transaction are re-loaded, not trusted). One count per table
        by `artifact = ?`: an artifact's rows are loaded together, so DuckDB's zone maps skip the others' (0.7 ms per
        count of 250k rows among 1M; a grouped count over a list of artifacts read every row, 7 ms)."""
        fingerprint, tables = manifest["fingerprint"], manifest.get("tables", {})
        known = con.execute("SELECT count(*) FROM artifacts WHERE fingerprint = ?", [fingerprint]).fetchone()[0]
        counted = dict(con.execute("SELECT table_name, row_count FROM recorded WHERE artifact = ?",
                                   [fingerprint]).fetchall())
        return bool(known), [t for t in tables if t not in ROW_TABLES or counted.get(t) != con.execute(
            f"SELECT count(*) FROM {t} WHERE artifact = ?", [fingerprint]).fetchone()[0]]

    def record_check(self, artifact: str, name: str, passed: bool | None, detail: str) -> None:
        """One check's verdict on an artifact; passed None: not evaluated (not configured), never a pass."""
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO check_results VALUES (?, ?, ?, ?)", [artifact, name, passed, detail])

    def checks_of(self, artifacts: list[str]) -> dict[str, dict[str, bool | None]]:
        rows = self.query("SELECT artifact, check_name, passed FROM check_results WHERE list_contains(?, artifact)",
                          [artifacts])
        result: dict[str, dict[str, bool]] = {}
        for artifact, name, passed in rows:
            result.setdefault(artifact, {})[name] = passed
        return result

    def replace_rows(self, table: str, artifact: str, parquet: Path) -> None:
        """(Re)load one artifact's rows of `table` from its Parquet file, idempotently, in one transaction."""
        if table not in ROW_TABLES:
            raise ValueError(f"{table!r} is not a row table of the catalog (expected one of {ROW_TABLES})")
        with self.connect() as con:
            con.execute("BEGIN")
            con.execute(f"DELETE FROM {table} WHERE artifact = ?", [artifact])
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] != "artifact"]
            con.execute(
                f"INSERT INTO {table} SELECT ? AS artifact, {', '.join(columns)} FROM read_parquet(?)",
                [artifact, str(parquet)],
            )
            count = con.execute(f"SELECT count(*) FROM {table} WHERE artifact = ?", [artifact]).fetchone()[0]
            con.execute("INSERT OR REPLACE INTO recorded VALUES (?, ?, ?)", [artifact, table, count])
            con.execute("COMMIT")

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()
