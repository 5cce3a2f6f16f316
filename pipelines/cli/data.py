"""`tuneline data show`: a preview of raw_data, clean_data or formatted_data's rows, or of their quarantine with
each row's reason, as the recipe's plan names them (LlamaBoard's data preview)."""

from __future__ import annotations

import argparse
import json

from engine.errors import TunelineError
from pipelines.cli.options import recipe_options

DATA_ASSETS = ("raw_data", "clean_data", "formatted_data")


def register(command) -> None:
    parser = command("data", "preview the rows of a data stage, or its quarantined rows with their reasons", data)
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the first rows of raw_data, clean_data or formatted_data")
    show.add_argument("asset", help=f"{', '.join(DATA_ASSETS)} (the recipe's), or an artifact fingerprint or "
                                    "directory of one")
    show.add_argument("--rows", type=int, default=10, help="how many rows (default 10)")
    show.add_argument("--quarantined", action="store_true", help="the quarantined rows, with stage, reason, detail")
    show.add_argument("--json", action="store_true", help="the rows as JSON, values whole (for machines)")
    show.add_argument("--verbose", action="store_true", help="show tracebacks")
    recipe_options(show)


def data(args: argparse.Namespace) -> int:
    from engine.data.preview import first_rows, render, table_path
    from pipelines.cli.built import built_artifact
    if args.rows < 1:
        raise TunelineError(f"data show --rows {args.rows}: expected a count of 1 or more")
    artifact = built_artifact(args, args.asset, DATA_ASSETS)
    table = table_path(artifact.path, artifact.asset, args.quarantined)
    rows, total = first_rows(table, args.rows)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return 0
    what = "quarantined rows" if args.quarantined else "rows"
    print(f"{artifact.asset} {artifact.fingerprint}: the first {len(rows)} of {total} {what} ({artifact.path}/{table[1]})")
    print(render(rows))
    return 0
