"""`tuneline eval`: every stage evaluated (what is missing upstream built first) and, with --compare, side by side
with each gate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.errors import TunelineError
from pipelines.cli.materialize import materialize
from pipelines.cli.options import recipe_options
from pipelines.cli.result import outcome, report
from pipelines.cli.stopped import interrupted_step


def register(command) -> None:
    parser = command("eval", "evaluate base, SFT, DPO, merged, GPTQ and AWQ models and check the gates", evaluate)
    recipe_options(parser)
    parser.add_argument("--compare", action="store_true", help="print the comparison table and each gate")
    parser.add_argument("--build", action="store_true",
                        help="train and build what the evaluation needs and is not built yet (without it, eval "
                             "stops and names the stages it would train)")


def refuse_to_train(tuneline) -> None:
    """Without --build, an evaluation that would first train stops and names what it would train and build."""
    plan, store = tuneline.plan(), tuneline.home().store()
    from engine.plan import ancestors
    needed = [n for n in plan if n in {*ancestors(plan, "model_comparison"), "model_comparison"}]
    missing = [name for name in needed if store.lookup(name, plan[name].fingerprint) is None]
    recipe = tuneline.recipe()
    training = [name for name in missing
                if plan[name].stage.training and plan[name].stage.runs_out_of_process(recipe)]
    if training:
        raise TunelineError(f"eval: {', '.join(training)} not trained for this recipe, and {len(missing)} stages "
                            f"not built ({', '.join(missing)}); add --build to train and build them first, or run "
                            "`tuneline run`")


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate every stage (building what is missing upstream) and, with --compare, print them side by side."""
    result, seconds = materialize(args, "*model_comparison", before=None if args.build else refuse_to_train)
    if interrupted_step(result) is not None:
        return outcome(result)
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
