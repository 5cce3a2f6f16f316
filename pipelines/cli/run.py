"""`tuneline run`: materialize the asset graph (all of it, or --select) and report what it made."""

from __future__ import annotations

import argparse

from pipelines.cli.materialize import materialize
from pipelines.cli.options import recipe_options
from pipelines.cli.result import outcome, report
from pipelines.cli.stopped import interrupted_step


def register(command) -> None:
    parser = command("run", "materialize the asset graph (all of it, or --select)", run)
    recipe_options(parser)
    parser.add_argument("--select", help="assets to materialize: 'raw_data,clean_data' or a Dagster selection such "
                                         "as '*merged_model' (an asset and everything upstream)")
    parser.add_argument("--rebuild", metavar="ASSET[,ASSET]",
                        help="build these assets again: their artifacts for this recipe are moved aside (to "
                             "<asset>/.damaged-<fingerprint>-<time>/, removed after 7 days) first")


def run(args: argparse.Namespace) -> int:
    result, seconds = materialize(args, args.select)
    if interrupted_step(result) is None:  # a stopped run says where, in one line, and nothing else
        print(report(result, seconds))
    return outcome(result)
