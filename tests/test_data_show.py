"""`tuneline data show`: the rows a data stage published, as the Parquet holds them, and its quarantine with reasons."""

import json

import dagster as dg
import pyarrow.parquet as pq

from engine.store.tables import read_table
import pytest

from engine.data.preview import first_rows, readable, render
from pipelines.cli import main
from pipelines.definitions import ASSETS, resources


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny recipe's data stages, built in a temporary artifact root: (root, {asset: artifact directory})."""
    root = tmp_path_factory.mktemp("data-show")
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources("tiny", str(root)), instance=instance,
                                selection="*formatted_data")
    assert result.success
    return root, {a: next((root / "artifacts" / a).glob("*/manifest.json")).parent
                  for a in ("raw_data", "clean_data", "formatted_data")}


def show(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", "show", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("asset, table", [("raw_data", "rows"), ("clean_data", "rows"), ("formatted_data", "splits")])
def test_json_rows_equal_the_parquet_rows(built, capsys, asset, table):
    root, paths = built
    code, out, _ = show(capsys, asset, "--rows", "3", "--json", "--artifact-root", str(root))
    assert code == 0
    assert json.loads(out) == read_table(paths[asset], table).slice(0, 3).to_pylist()


def test_quarantined_rows_show_their_reasons(built, capsys):
    root, paths = built
    expected = read_table(paths["clean_data"], "quarantine").to_pylist()
    assert expected, "the sample data plants rows that cleaning quarantines"
    code, out, _ = show(capsys, "clean_data", "--quarantined", "--rows", "1000", "--json", "--artifact-root",
                        str(root))
    assert code == 0 and json.loads(out) == expected
    code, out, _ = show(capsys, paths["raw_data"].name, "--quarantined", "--rows", "2", "--artifact-root",
                        str(root))  # by fingerprint, as a table
    raw = read_table(paths["raw_data"], "quarantine").slice(0, 2).to_pylist()
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"raw_data {paths['raw_data'].name}: the first 2 of ")
    for row, line in zip(raw, lines[3:], strict=True):
        assert row["row_id"] in line and row["reason"] in line


def test_the_table_shortens_cells_on_word_boundaries_only(built, capsys):
    root, paths = built
    code, out, _ = show(capsys, "clean_data", "--rows", "20", "--artifact-root", str(root))
    assert code == 0 and "…" in out  # some conversation was too long for its column
    rows, total = first_rows((paths["clean_data"], "rows"), 20)
    assert len(rows) == 20 and total == read_table(paths["clean_data"], "rows").num_rows
    words = {w for r in rows for value in r.values() for w in readable(value).split()}
    body = render(rows, width=100).splitlines()[2:]
    cells = [w for line in body for w in line.split() if w not in ("…", "|")]
    assert all(w in words for w in cells), [w for w in cells if w not in words]


def test_not_built_and_not_a_data_asset_are_one_line_errors(built, tmp_path, capsys):
    root, _ = built
    code, _, err = show(capsys, "clean_data", "--artifact-root", str(tmp_path / "empty"))
    assert code == 2 and "clean_data" in err and "is not built under" in err and len(err.splitlines()) == 1
    base = next((root / "artifacts" / "base_model").glob("*/manifest.json")).parent
    code, _, err = show(capsys, base.name, "--artifact-root", str(root))
    assert code == 2 and "is a base_model artifact" in err and len(err.splitlines()) == 1
