"""`tuneline plan`: every stage's fingerprint under the recipe, before any work, and whether it is built."""

from __future__ import annotations

import argparse
import json

from pipelines.cli.options import recipe_options
from pipelines.cli.quiet import quiet_libraries, quiet_llmcompressor
from pipelines.cli.recipe import checked_recipe, tuneline_resource


def register(command) -> None:
    parser = command("plan", "print the fingerprint of every stage the recipe implies, before any work", plan)
    recipe_options(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def plan(args: argparse.Namespace) -> int:
    """Every stage's fingerprint under the recipe, before any work, and whether its artifact is built."""
    quiet_libraries()
    quiet_llmcompressor()
    _, overrides = checked_recipe(args)
    tuneline = tuneline_resource(args.recipe, args.artifact_root, overrides)
    planned, store = tuneline.plan(), tuneline.home().store()
    rows = [{"stage": name, "fingerprint": p.fingerprint, "built": store.lookup(name, p.fingerprint) is not None,
             "parents": p.parents, "keys": list(p.keys), "code_version": p.code, "not_configured": p.off}
            for name, p in planned.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'stage':<17} {'fingerprint':<17} {'built':<6} reads")
    for row in rows:
        reads = ", ".join([*row["parents"], *row["keys"]]) or "-"
        reads += f" (not configured: {row['not_configured']})" if row["not_configured"] else ""
        print(f"{row['stage']:<17} {row['fingerprint']:<17} {'yes' if row['built'] else 'no':<6} {reads}")
    return 0
