"""`tuneline export`: a built model as a standalone Hugging Face folder of the user's choosing (artifacts live only
under fingerprinted paths), like `llamafactory-cli export`; optionally pushed to the Hub."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cli.options import recipe_options
from pipelines.cli.quiet import quiet_libraries

EXPORTABLE = ("sft_adapter", "dpo_adapter", "ppo_adapter", "grpo_adapter", "merged_model", "gptq_model",
              "awq_model")  # engine/export/standalone.py


def register(command) -> None:
    parser = command("export", "write a built model to a folder of your choosing as a standalone Hugging Face model",
                     export)
    parser.add_argument("model", help=f"{', '.join(EXPORTABLE)} (the recipe's), or an artifact fingerprint or "
                                      "directory of one; an adapter is merged into its base model")
    parser.add_argument("out", help="the folder to write (missing or empty; see --force)")
    parser.add_argument("--force", action="store_true", help="replace a folder that is not empty")
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to this Hub model repository "
                                                              "(needs HF_TOKEN and network; checked before writing)")
    recipe_options(parser)


def export(args: argparse.Namespace) -> int:
    quiet_libraries()
    from engine.export.hub import check_push, push
    from engine.export.standalone import export as write_export
    from engine.store.home import Home
    from pipelines.cli.built import built_artifact
    token = check_push(args.push_to_hub) if args.push_to_hub else None  # before anything is written
    artifact = built_artifact(args, args.model, EXPORTABLE)
    home = Home(args.artifact_root)
    catalog = home.catalog()
    catalog.heal_from(home.store().manifests())  # the catalog is derived: what it lacks, the artifacts tell
    out = write_export(home.store(), catalog, artifact, Path(args.out), args.force)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {artifact.asset} {artifact.fingerprint} to {out} ({size / 1e6:.1f} MB); "
          f"load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    if token:
        print(f"pushed to {push(out, args.push_to_hub, token)}", file=sys.stderr)
    return 0
