"""The DuckDB catalog (catalog.duckdb under the artifact root): artifacts, data rows, quarantine, checks.

The catalog is derived data. Every artifact's manifest names the row tables it fills, so a missing, deleted
or corrupted catalog is re-recorded from the artifacts themselves; every write is idempotent.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow.parquet as pq

from engine.errors import DataError

# check_results.passed NULL: not evaluated, what the check judges is off under the recipe (detail "not configured: ...")
SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    fingerprint VARCHAR PRIMARY KEY, asset VARCHAR, path VARCHAR, created_at VARCHAR,
    code_version VARCHAR, config JSON, metrics JSON, parents JSON, versions JSON);
CREATE TABLE IF NOT EXISTS recorded (
    artifact VARCHAR, table_name VARCHAR, row_count BIGINT, PRIMARY KEY (artifact, table_name));
ALTER TABLE recorded ADD COLUMN IF NOT EXISTS file VARCHAR;
CREATE TABLE IF NOT EXISTS check_results (
    artifact VARCHAR, check_name VARCHAR, passed BOOLEAN, detail VARCHAR, PRIMARY KEY (artifact, check_name));
"""
# The row tables are not copied into the catalog: each is a view over the artifacts' own Parquet files (recorded.file,
# relative to the artifact directory), projected to the columns lineage reads; the catalog keeps only their counts.
ROW_COLUMNS = {
    "raw_rows": ("source", "row_id", "content_hash", "format", "kind", "messages", "chosen", "rejected", "tools",
                 "label"),
    "quarantine": ("source", "row_id", "stage", "reason", "detail"),
    "duplicate_clusters": ("cluster_id", "kind", "kept_row_id", "removed_row_id", "similarity"),
    "rewrites": ("source", "row_id", "step", "field", "before", "after"),
    "split_rows": ("source", "row_id", "content_hash", "view", "split"),
}
ROW_TABLES = tuple(ROW_COLUMNS)


class CatalogError(DataError):
    pass


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
            self.migrate(con)
            yield con
        finally:
            con.close()

    @staticmethod
    def migrate(con) -> None:
        """A catalog from before the row views held a copy of every row: drop the copies and their counts, at once
        and atomically; the next heal (every build and `tuneline lineage` heals) records the Parquet files instead."""
        copies = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND list_contains(?, table_name)",
            [list(ROW_TABLES)]).fetchall()]
        if copies:
            con.execute("BEGIN")
            for table in copies:
                con.execute(f"DROP TABLE {table}")
            con.execute("DELETE FROM recorded WHERE file IS NULL")
            con.execute("COMMIT")

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
                self.replace_rows(table, manifest["fingerprint"], path, manifest_files(manifest["tables"][table]))
        return recorded

    @staticmethod
    def gap(con, manifest: dict) -> tuple[bool, list[str]]:
        """(whether the artifact is recorded, which of its row tables' Parquet files are not)."""
        fingerprint, tables = manifest["fingerprint"], manifest.get("tables", {})
        known = con.execute("SELECT count(*) FROM artifacts WHERE fingerprint = ?", [fingerprint]).fetchone()[0]
        counted = dict(con.execute("SELECT table_name, row_count FROM recorded WHERE artifact = ?",
                                   [fingerprint]).fetchall())
        return bool(known), [t for t in tables if t not in ROW_TABLES or t not in counted]

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

    def replace_rows(self, table: str, artifact: str, directory: Path, files: list[str]) -> None:
        """Record one artifact's Parquet files of `table` (names relative to the artifact directory, in row order,
        and their row count from the Parquet footers), idempotently; the rows stay in the artifact."""
        if table not in ROW_TABLES:
            raise ValueError(f"{table!r} is not a row table of the catalog (expected one of {ROW_TABLES})")
        with self.connect() as con:
            count = con.execute("SELECT sum(num_rows) FROM parquet_file_metadata(?)",
                                [[str(directory / f) for f in files]]).fetchone()[0]
            con.execute("INSERT OR REPLACE INTO recorded VALUES (?, ?, ?, ?)", [artifact, table, count,
                                                                               json.dumps(files)])

    def forget(self, fingerprints: list[str]) -> None:
        """Drop what the catalog holds of removed (pruned) artifacts: their record, row files and checks."""
        if not fingerprints:
            return
        with self.connect() as con:
            con.execute("BEGIN")
            for table, key in (("artifacts", "fingerprint"), ("recorded", "artifact"), ("check_results", "artifact")):
                con.execute(f"DELETE FROM {table} WHERE list_contains(?, {key})", [fingerprints])
            con.execute("COMMIT")

    def artifact_dir(self, asset: str, fingerprint: str, path: str) -> Path:
        """Where an artifact is now: its recorded path, or the same place under this catalog's root if the home
        was moved (<root>/artifacts/<asset>/<fingerprint>, as Home lays them out)."""
        recorded = Path(path)
        return recorded if recorded.is_dir() else self.path.parent / "artifacts" / asset / fingerprint

    def row_views(self, con, sql: str, artifacts: list[str] | None = None) -> None:
        """Create (on this connection) the row tables `sql` names as views over the artifacts' Parquet files: of
        every artifact, or of `artifacts` only (a query about one lineage opens only its files). Artifacts whose
        directory is gone (removed outside retention) are forgotten; a file missing from an artifact that is there
        stops with one line."""
        for table in (t for t in ROW_TABLES if re.search(rf"\b{t}\b", sql)):
            rows = con.execute("SELECT a.fingerprint, a.asset, a.path, r.file FROM recorded r JOIN artifacts a "
                               "ON a.fingerprint = r.artifact WHERE r.table_name = ? AND (? IS NULL OR "
                               "list_contains(?, a.fingerprint)) ORDER BY 1", [table, artifacts, artifacts]).fetchall()
            parts = []
            for fingerprint, asset, path, file in rows:
                directory = self.artifact_dir(asset, fingerprint, path)
                if not directory.is_dir():
                    continue  # removed: not part of any lineage any more
                quoted = []
                for parquet in (directory / f for f in recorded_files(file)):
                    if not parquet.is_file():
                        raise CatalogError(f"{asset} {fingerprint}: its {table} file {parquet} is missing (expected "
                                           "the file its manifest lists; rebuild it with `tuneline run --rebuild`)")
                    quoted.append("'" + str(parquet).replace("'", "''") + "'")
                parts.append(f"SELECT '{fingerprint}' AS artifact, {', '.join(ROW_COLUMNS[table])} "
                             f"FROM read_parquet([{', '.join(quoted)}])")
            empty = ", ".join(f"NULL::VARCHAR AS {c}" for c in ("artifact", *ROW_COLUMNS[table]))
            body = " UNION ALL ".join(parts) or f"SELECT {empty} WHERE false"
            con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {body}")

    def query(self, sql: str, params: list | None = None, artifacts: list[str] | None = None) -> list[tuple]:
        """`sql`'s rows; its row tables hold the rows of `artifacts` only, where given (else of every artifact)."""
        with self.connect() as con:
            self.row_views(con, sql, artifacts)
            return con.execute(sql, params or []).fetchall()

    def query_to_parquet(self, sql: str, params: list | None, artifacts: list[str] | None, path: Path,
                         batch_rows: int = 10_000) -> None:
        """query's rows written to the Parquet file `path`, `batch_rows` at a time: a result of millions of rows (a
        corpus's lineage) is never held whole, and the catalog is free again once they are on disk."""
        with self.connect() as con:
            self.row_views(con, sql, artifacts)
            reader = con.sql(sql, params=params or None).to_arrow_reader(batch_rows)
            with pq.ParquetWriter(path, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)


def manifest_files(listed: str | list[str]) -> list[str]:
    """A manifest's files of one table: a list (sharded tables), or the one file name manifests held before."""
    return [listed] if isinstance(listed, str) else list(listed)


def recorded_files(file: str) -> list[str]:
    """recorded.file: a JSON list of the table's files, or the one file name recorded before tables were sharded."""
    return json.loads(file) if file.startswith("[") else [file]
