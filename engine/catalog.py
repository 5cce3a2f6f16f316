"""The DuckDB catalog (catalog.duckdb under the artifact root): artifacts, data rows, quarantine."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    fingerprint VARCHAR PRIMARY KEY, asset VARCHAR, path VARCHAR, created_at VARCHAR,
    code_version VARCHAR, config JSON, metrics JSON, parents JSON, versions JSON);
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
CREATE TABLE IF NOT EXISTS split_rows (
    artifact VARCHAR, source VARCHAR, row_id VARCHAR, content_hash VARCHAR, view VARCHAR, split VARCHAR);
"""


class Catalog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits for another process's write lock instead of failing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(60):
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException:
                if attempt == 59:
                    raise
                time.sleep(0.5)
        try:
            con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    def record_artifact(self, manifest: dict, path: Path) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [manifest["fingerprint"], manifest["asset"], str(path), manifest["created_at"],
                 manifest["code_version"], json.dumps(manifest["config"], default=str),
                 json.dumps(manifest["metrics"], default=str), json.dumps(manifest["parents"]),
                 json.dumps(manifest.get("versions", {}))],
            )

    def record_check(self, artifact: str, name: str, passed: bool, detail: str) -> None:
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO check_results VALUES (?, ?, ?, ?)", [artifact, name, passed, detail])

    def checks_of(self, artifacts: list[str]) -> dict[str, dict[str, bool]]:
        rows = self.query("SELECT artifact, check_name, passed FROM check_results WHERE list_contains(?, artifact)",
                          [artifacts])
        result: dict[str, dict[str, bool]] = {}
        for artifact, name, passed in rows:
            result.setdefault(artifact, {})[name] = passed
        return result

    def replace_rows(self, table: str, artifact: str, parquet: Path) -> None:
        """(Re)load one artifact's rows of `table` from its Parquet file, idempotently."""
        with self.connect() as con:
            con.execute("BEGIN")
            con.execute(f"DELETE FROM {table} WHERE artifact = ?", [artifact])
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] != "artifact"]
            con.execute(
                f"INSERT INTO {table} SELECT ? AS artifact, {', '.join(columns)} FROM read_parquet(?)",
                [artifact, str(parquet)],
            )
            con.execute("COMMIT")

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()
