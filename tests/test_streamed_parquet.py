"""Reading a Parquet file batch by batch holds one row group, not the file: pyarrow's default pre-buffering kept
every row group read until the file was closed (clean_data's 10M-row part file: 8.5 GB peak at data.memory_gb 4)."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

READ = """
import json, sys
from pathlib import Path
from engine.data.readers import parquet_records
from engine.store.tables import table_batches

def high_water_kb():
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")).split()[1])

folder, name = Path(sys.argv[1]), sys.argv[2]
read = {"table_batches": lambda: table_batches(folder, "rows", batch_rows=200),
        "parquet_records": lambda: parquet_records(folder / "rows-00000.parquet", batch_size=200)}[name]
batches = iter(read())
next(batches)  # the reader's and the memory pool's first allocations
before, rows = high_water_kb(), 1
for _ in batches:
    rows += 1
growth = (high_water_kb() - before, rows)
print(json.dumps(growth))
"""


def test_a_file_is_read_one_row_group_at_a_time(tmp_path):
    rows, width = 16_000, 10_000  # 160 MB of random hex: incompressible, in row groups of 400 rows (4 MB)
    with pq.ParquetWriter(tmp_path / "rows-00000.parquet", pa.schema([("text", pa.string())])) as writer:
        for _ in range(rows // 400):
            writer.write_table(pa.table({"text": [os.urandom(width // 2).hex() for _ in range(400)]}))
    size_mb = (tmp_path / "rows-00000.parquet").stat().st_size / 2**20
    assert size_mb > 150
    for name, count in (("parquet_records", rows), ("table_batches", rows // 200)):  # each in a fresh process
        done = subprocess.run([sys.executable, "-c", READ, str(tmp_path), name], capture_output=True, text=True,
                              timeout=300, check=True)
        kb, read = json.loads(done.stdout.strip().splitlines()[-1])
        assert read == count, name
        assert kb / 1024 < size_mb / 3, (name, kb / 1024, size_mb)  # pre-buffered: about the whole file
