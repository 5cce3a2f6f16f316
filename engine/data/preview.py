"""A preview of a data stage's rows (`tuneline data show`): the first N rows of its Parquet table or its quarantine,
read lazily (record batches until N rows, never the whole file), as JSON values or as a table a person reads, each
cell shortened on word boundaries."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from engine.errors import TunelineError
from engine.store.tables import table_batches, table_files, table_rows

ROWS = {"raw_data": "rows", "clean_data": "rows", "formatted_data": "splits"}  # tables (engine/store/tables.py)
QUARANTINE = "quarantine"  # each data stage's quarantined rows, with their reasons
HIDDEN = ("content_hash",)  # a digest has no words to shorten on: --json shows it
MIN_TEXT_WIDTH = 24


def table_path(artifact: Path, asset: str, quarantined: bool) -> tuple[Path, str]:
    """(artifact, table) a preview reads: the stage's rows, or its quarantine."""
    if asset not in ROWS:
        raise TunelineError(f"data show {asset}: not a data asset (expected one of {', '.join(ROWS)})")
    name = QUARANTINE if quarantined else ROWS[asset]
    if not table_files(artifact, name):
        raise TunelineError(f"{asset} at {artifact} has no {name} table ({name}-*.parquet or {name}.parquet; "
                            f"expected it in every published {asset})")
    return artifact, name


def first_rows(table: tuple[Path, str], limit: int) -> tuple[list[dict], int]:
    """(the first `limit` rows as dicts, the table's row count from its footers): batches are read only until
    `limit` rows are in hand."""
    rows: list[dict] = []
    for batch in table_batches(*table, batch_rows=max(limit, 1)):
        rows += batch.to_pylist()[:limit - len(rows)]
        if len(rows) >= limit:
            break
    return rows, table_rows(*table)


def readable(value) -> str:
    """A cell as a person reads it: a conversation (the stored JSON list of turns) as `role: content` turns."""
    if value is None:
        return ""
    text = str(value)
    if text.startswith("[{"):
        try:
            turns = json.loads(text)
            return " | ".join(f"{t['role']}: {t['content']}" for t in turns)
        except (ValueError, TypeError, KeyError):
            pass
    return text


def render(rows: list[dict], width: int | None = None) -> str:
    """The rows as a table: columns empty in every shown row and digests left out; each text cell shortened on
    word boundaries (textwrap.shorten: never inside a word) to share the terminal's width."""
    from tabulate import tabulate  # dagster's own table library, pinned with it
    if not rows:
        return "(no rows)"
    columns = [c for c in rows[0] if c not in HIDDEN and any(r.get(c) not in (None, "") for r in rows)]
    cells = [{c: " ".join(readable(r.get(c)).split()) for c in columns} for r in rows]
    natural = {c: max(len(c), *(len(cell[c]) for cell in cells)) for c in columns}
    total = width or shutil.get_terminal_size((160, 24)).columns
    short = {c for c in columns if natural[c] <= 24}  # ids, sources, kinds, reasons: shown whole
    room = total - sum(natural[c] + 2 for c in short) - 2 * len(columns)
    text_width = max(MIN_TEXT_WIDTH, room // max(1, len(columns) - len(short)))
    shown = [[cell[c] if c in short else textwrap.shorten(cell[c], text_width, placeholder=" …") for c in columns]
             for cell in cells]
    return tabulate(shown, headers=columns, tablefmt="simple")
