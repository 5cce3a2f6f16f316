"""`tuneline lineage`: what made an artifact (ancestors, checks, data rows per source), from the catalog."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import TunelineError
from pipelines.cli.options import artifact_root_option


def register(command) -> None:
    parser = command("lineage", "what made an artifact: ancestors, checks, data rows per source", lineage)
    parser.add_argument("artifact", help="an artifact directory or fingerprint (a unique prefix is enough)")
    artifact_root_option(parser)
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.add_argument("--rows", metavar="FILE", help="write the training rows' ids and hashes to FILE (CSV)")


def lineage(args: argparse.Namespace) -> int:
    from engine.store.home import Home
    from engine.store.lineage import lineage as lineage_of
    from engine.store.lineage import render, write_training_rows
    home = Home(args.artifact_root)
    if not home.artifacts.is_dir():
        raise TunelineError(f"no artifacts under {home.root}: run `tuneline run` first, or pass --artifact-root")
    catalog = home.catalog()
    catalog.heal_from(home.store().manifests())  # the catalog is derived: what it lacks, the artifacts tell
    record = lineage_of(catalog, args.artifact)
    print(json.dumps(record, indent=2, default=str) if args.json else render(record))
    if args.rows:
        count = write_training_rows(catalog, args.artifact, Path(args.rows))
        print(f"wrote {count} training rows (source, row_id, raw and clean content hash, view, split) "
              f"to {args.rows}", file=sys.stderr)
    return 0
