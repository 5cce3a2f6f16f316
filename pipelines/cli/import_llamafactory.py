"""`tuneline import-llamafactory`: LLaMA-Factory training YAMLs turned into one tuneline recipe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(command) -> None:
    parser = command("import-llamafactory", "turn LLaMA-Factory training YAMLs into one tuneline recipe",
                     import_llamafactory)
    parser.add_argument("configs", nargs="+",
                        help="LLaMA-Factory YAML files, one per stage (pt, sft, rm, dpo, kto) or export")
    parser.add_argument("-o", "--output", help="write the recipe here (default: print it)")
    parser.add_argument("--eval-dataset", metavar="NAME[,NAME]",
                        help="chat datasets (dataset_info.json names) to evaluate every export on, for configs that "
                             "name none (pre-training or an export alone)")


def import_llamafactory(args: argparse.Namespace) -> int:
    from engine.importers.llamafactory import import_configs
    names = [n.strip() for n in (args.eval_dataset or "").split(",") if n.strip()]
    text, unmapped = import_configs([Path(p) for p in args.configs], names)
    for line in unmapped:
        print(f"tuneline: warning: {line}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}; run it with `tuneline run --recipe {args.output}`", file=sys.stderr)
    else:
        print(text, end="")
    return 0
