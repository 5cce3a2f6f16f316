"""The options several commands share: the recipe, the artifact root, `--set` overrides (and parsing them)."""

from __future__ import annotations

import argparse
import os

from engine.errors import TunelineError


def recipe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", help="a recipe name in pipelines/recipes/ or a YAML path")
    artifact_root_option(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")


def artifact_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact-root", default=os.environ.get("TUNELINE_HOME", ".tuneline"))


def parse_overrides(pairs: list[str]) -> dict:
    """`--set sft.learning_rate=1e-4` pairs; values are parsed as YAML scalars."""
    import yaml
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise TunelineError(f"--set {pair!r}: expected KEY=VALUE, e.g. sft.learning_rate=1e-4")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise TunelineError(f"--set {pair!r}: the value is not a YAML scalar, list or mapping "
                                f"({getattr(exc, 'problem', None) or exc})") from None
    return overrides
