"""`tuneline eval`: every stage evaluated (what is missing upstream built first) and, with --compare, side by side
with each gate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.materialize import materialize
from pipelines.cli.options import recipe_options
from pipelines.cli.result import outcome, report


def register(command) -> None:
    parser = command("eval", "evaluate base, SFT, DPO, merged, GPTQ and AWQ models and check the gates", evaluate)
    recipe_options(parser)
    parser.add_argument("--compare", action="store_true", help="print the comparison table and each gate")


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate every stage (building what is missing upstream) and, with --compare, print them side by side."""
    result, seconds = materialize(args, "*model_comparison")
    print(report(result, seconds))
    comparison = [e for e in result.get_asset_materialization_events()
                  if e.asset_key.to_user_string() == "model_comparison"]
    if not comparison:
        return outcome(result) or 1
    if args.compare:
        directory = Path(comparison[0].materialization.metadata["path"].value)
        from engine.store.artifacts import MANIFEST
        print("\n" + json.loads((directory / MANIFEST).read_text())["metrics"]["table"] + "\n")
        for check in result.get_asset_check_evaluations():
            if check.asset_key.to_user_string() == "model_comparison":
                print(f"{'pass' if check.passed else 'FAIL'}  {check.check_name}: {check.metadata['detail'].value}")
        from assets.stage_asset import CHECKS_NOT_CONFIGURED
        off = comparison[0].materialization.metadata.get(CHECKS_NOT_CONFIGURED)
        for name, detail in (off.value if off else {}).items():  # not evaluated: not a pass
            print(f"off   {name}: {detail}")
    return outcome(result)
