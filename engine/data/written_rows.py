"""clean_data's written rows read back, for its checks, a record batch at a time: nothing here holds the corpus."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.ingest import content_hash
from engine.store.bounded_sql import bounded_duckdb
from engine.store.tables import table_batches

HASHED = ["row_id", "kind", "messages", "chosen", "rejected", "tools", "label"]
KEYS = pa.schema([("kind", pa.string()), ("key", pa.string()), ("row_id", pa.string()), ("position", pa.int64())])


def exact_duplicates(clean_dir: Path, memory_gb: float, shown: int = 3) -> tuple[int, int, list[str]]:
    """(written rows, written rows whose kind and texts an earlier written row has, the first `shown` of those as
    "row_id = the earlier row_id"). Each row's hash is computed again from its written texts (not the content_hash
    column cleaning wrote); the keys go to a Parquet file and DuckDB groups them within `memory_gb` (a dict of every
    row's key would grow with the corpus: ~250 bytes a row). The file and DuckDB's spill go under $TMPDIR."""
    with tempfile.TemporaryDirectory(prefix="tuneline-duplicates-") as work:
        keys, rows = Path(work) / "keys.parquet", 0
        with pq.ParquetWriter(keys, KEYS) as writer:
            for batch in table_batches(clean_dir, "rows", HASHED):
                hashed = [content_hash(json.loads(r["messages"]), r["chosen"], r["rejected"], r["tools"], r["label"])
                          for r in batch.to_pylist()]
                writer.write_batch(pa.record_batch([pc.fill_null(batch.column("kind"), ""),  # joins match on it
                                                    pa.array(hashed, pa.string()),
                                                    batch.column("row_id"),
                                                    pa.array(range(rows, rows + batch.num_rows), pa.int64())],
                                                   schema=KEYS))
                rows += batch.num_rows
        con = bounded_duckdb(memory_gb, Path(work) / "duckdb")
        try:
            con.execute("CREATE TEMP TABLE firsts AS SELECT kind, key, min(position) AS first, "
                        "arg_min(row_id, position) AS first_row FROM read_parquet(?) GROUP BY kind, key "
                        "HAVING count(*) > 1", [str(keys)])
            later = "FROM read_parquet(?) AS k JOIN firsts USING (kind, key) WHERE k.position > firsts.first"
            (count,) = con.execute(f"SELECT count(*) {later}", [str(keys)]).fetchone()
            examples = con.execute(f"SELECT k.row_id || ' = ' || firsts.first_row {later} ORDER BY k.position LIMIT ?",
                                   [str(keys), shown]).fetchall()
        finally:
            con.close()
    return rows, count, [e for (e,) in examples]
