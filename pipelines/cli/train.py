"""`tuneline train`: one training stage from its spec.json, in this process (what the orchestrator launches)."""

from __future__ import annotations

import argparse


def register(command) -> None:
    parser = command("train", "run one training stage from its spec.json, in this process (what the "
                              "orchestrator launches, alone or under torchrun / accelerate launch)", train)
    parser.add_argument("stage", help="the stage the spec is for")
    parser.add_argument("--spec", required=True, help="the spec.json the orchestrator wrote")


def train(args: argparse.Namespace) -> int:
    from pipelines.train_process import main as train_main, pipes_reporter
    return train_main([args.stage, "--spec", args.spec, *(["--verbose"] if args.verbose else [])], pipes_reporter)
