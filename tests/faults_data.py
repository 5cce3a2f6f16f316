"""Faults of the data checks (see tests/faults.py): each damages the written tables or views of a copy, as a writer
with that bug would have written them, and records the damaged files in the copy's manifest (so files_intact,
which judges the files against the manifest, still passes: the bug is in what was written, not in the disk)."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

from datasets import load_from_disk

from engine.data.constants import IGNORE
from engine.store.digests import MANIFEST, file_digests
from engine.store.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, ShardWriter, table_dicts, table_files, write_rows
from tests.faults import Fault


def rewritten(artifact):
    """The copy's manifest lists its files as they are now."""
    manifest = json.loads((artifact.path / MANIFEST).read_text())
    manifest["files"] = file_digests(artifact.path)
    (artifact.path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return artifact


def row_tables(artifact) -> tuple[list[dict], list[dict]]:
    return list(table_dicts(artifact.path, "rows")), list(table_dicts(artifact.path, "quarantine"))


def write_tables(artifact, rows: list[dict], quarantine: list[dict]):
    for name, table, columns in (("rows", rows, ROW_COLUMNS), ("quarantine", quarantine, QUARANTINE_COLUMNS)):
        files = table_files(artifact.path, name)
        for file in files:
            file.unlink()
        if files[0].name == f"{name}.parquet":  # the table as it was laid out: one file, or shards
            write_rows(table, files[0], columns)
        else:
            with ShardWriter(artifact.path, name, columns) as writer:
                writer.add_all(table)
    return rewritten(artifact)


def lose_a_written_row(artifact, recipe):
    """The last row of the largest source missing from rows.parquet (a writer that drops its last batch's row)."""
    rows, quarantine = row_tables(artifact)
    largest = Counter(r["source"] for r in rows).most_common(1)[0][0]
    last = max(i for i, r in enumerate(rows) if r["source"] == largest)
    return write_tables(artifact, rows[:last] + rows[last + 1:], quarantine), recipe


def keep_a_duplicate(artifact, recipe):
    """A kept row whose texts are another kept row's of its source and kind (the dedup step let it through)."""
    rows, quarantine = row_tables(artifact)
    first = rows[0]
    twin = next(i for i, r in enumerate(rows[1:], 1) if (r["source"], r["kind"]) == (first["source"], first["kind"]))
    rows[twin] = {**rows[twin], **{k: first[k] for k in ("content_hash", "messages", "chosen", "rejected", "tools",
                                                          "label")}}
    return write_tables(artifact, rows, quarantine), recipe


def quarantine_rows(rows: list[dict], quarantine: list[dict], source: str, count: int):
    """`count` kept rows of `source` moved to the quarantine, as a length step that removed them would."""
    moved = [i for i, r in enumerate(rows) if r["source"] == source][:count]
    quarantine = quarantine + [{"source": rows[i]["source"], "row_id": rows[i]["row_id"], "stage": "clean:length",
                                "reason": "too_short", "detail": "12 characters < min_chars 20"} for i in moved]
    return [r for i, r in enumerate(rows) if i not in set(moved)], quarantine


def to_loss(artifact, rows, quarantine, source: str, share: float):
    """Rows of `source` quarantined until it has lost `share` of the rows it came in with."""
    rows_in = artifact.metrics["rows_in_by_source"][source]
    kept = sum(r["source"] == source for r in rows)
    return quarantine_rows(rows, quarantine, source, kept - math.floor(rows_in * (1 - share)))


def quarantine_too_many(artifact, recipe):
    """Every source loses the share halfway between clean.max_quarantine_ratio and clean.max_source_loss_ratio:
    too many rows quarantined in all, no source over its own bound."""
    bound, per_source = recipe.clean.max_quarantine_ratio, recipe.clean.max_source_loss_ratio
    assert bound < per_source, "the fault needs a total bound below the per-source one"
    rows, quarantine = row_tables(artifact)
    for source in artifact.metrics["rows_in_by_source"]:
        rows, quarantine = to_loss(artifact, rows, quarantine, source, (bound + per_source) / 2)
    return write_tables(artifact, rows, quarantine), recipe


def one_source_loses_most(artifact, recipe):
    """The source with the fewest rows loses three quarters of them (a step that misreads its format); the total
    quarantine stays within its bound."""
    rows, quarantine = row_tables(artifact)
    rows_in = artifact.metrics["rows_in_by_source"]
    smallest = min((s for s in rows_in if rows_in[s]), key=rows_in.get)
    rows, quarantine = to_loss(artifact, rows, quarantine, smallest, 0.75)
    assert len(quarantine) <= recipe.clean.max_quarantine_ratio * artifact.metrics["rows_in"], "not one source alone"
    return write_tables(artifact, rows, quarantine), recipe


def rewrite_view(artifact, view: str, split: str, change):
    """The written `view`'s `split` replaced by change(its rows), saved as formatting saves it."""
    folder = artifact.path / view
    splits = load_from_disk(str(folder))
    rows = change(splits[split].to_list())
    splits[split] = splits[split].from_list(rows, features=splits[split].features)
    staged = artifact.path / f"{view}.new"
    splits.save_to_disk(str(staged))
    del splits
    shutil.rmtree(folder)
    staged.rename(folder)
    return rewritten(artifact)


def unlabelled_row(artifact, recipe):
    """One written SFT train row whose labels are all ignored: it trains on nothing."""
    def change(rows):
        rows[0]["labels"] = [IGNORE] * len(rows[0]["labels"])
        return rows
    return rewrite_view(artifact, "sft", "train", change), recipe


def overlong_row(artifact, recipe):
    """One written SFT train row 5 tokens longer than cutoff_len (its prompt tokens repeated, labels ignored)."""
    cutoff = recipe.data.cutoff_len

    def change(rows):
        ids = rows[0]["input_ids"]
        extra = (ids * (cutoff // len(ids) + 2))[:cutoff + 5 - len(ids)]
        rows[0] = {**rows[0], "input_ids": extra + ids, "labels": [IGNORE] * len(extra) + rows[0]["labels"]}
        return rows
    return rewrite_view(artifact, "sft", "train", change), recipe


def too_few_eval_pairs(artifact, recipe):
    """The written preference eval split holds one pair fewer than data.min_eval_pairs."""
    need = recipe.data.min_eval_pairs
    return rewrite_view(artifact, "preference", "eval", lambda rows: rows[:need - 1]), recipe


FAULTS = {
    ("raw_data", "every_row_accounted"): Fault(
        lose_a_written_row, r"alpaca_tasks: (\d+) records in its files, \d+ stored \+ \d+ quarantined = \d+, "
                            r"expected \1 \(1 missing\)"),
    ("clean_data", "every_row_accounted"): Fault(
        lose_a_written_row, r"alpaca_tasks: \d+ in, \d+ kept, \d+ quarantined"),
    ("clean_data", "no_exact_duplicates"): Fault(
        keep_a_duplicate, r"^1 exact duplicates among \d+ written rows \(alpaca_tasks:\S+ = alpaca_tasks:\S+\)$"),
    ("clean_data", "quarantine_ratio_within_bound"): Fault(
        quarantine_too_many, r"^quarantined 3\d\.\d% \(\d+ of \d+ rows\), bound 25%$"),
    ("clean_data", "every_source_within_loss_bound"): Fault(
        one_source_loses_most, r"^\w+: lost 75\.\d% \(\d+ in, \d+ out\), bound 50\.0%, over by 25\.\d%$"),
    ("formatted_data", "labels_are_the_answers"): Fault(
        unlabelled_row, r"^1 of \d+ written SFT rows do not train on their answers: train \S+: no label token "
                        r"\(\d+ tokens, all labels -100\)$"),
    ("formatted_data", "lengths_within_cutoff"): Fault(
        overlong_row, r"^sft: \d+ rows, longest 133, 1 over; .* \(cutoff_len 128\)$"),
    ("formatted_data", "enough_eval_pairs"): Fault(
        too_few_eval_pairs, r"too few eval pairs: 31 in the preference eval split, need >= 32, short by 1"),
}
