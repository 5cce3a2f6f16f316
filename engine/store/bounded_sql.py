"""DuckDB within a memory budget: one place that says how a stage's SQL shares `data.memory_gb`."""

from __future__ import annotations

from pathlib import Path

import duckdb


def bounded_duckdb(memory_gb: float, spill_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that works within half of `memory_gb` (the rest is the caller's) and spills past it to
    `spill_dir`."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{max(int(memory_gb * 1024 / 2), 64)}MB'")
    con.execute("SET temp_directory = ?", [str(spill_dir)])
    return con
