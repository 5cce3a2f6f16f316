"""The built artifact a command names: an asset (the artifact the recipe's plan names for it), a fingerprint (or
a unique prefix of one) or an artifact directory; a plan's artifact that is not built is one line, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import TunelineError
from pipelines.cli.recipe import checked_recipe, tuneline_resource


def built_artifact(args: argparse.Namespace, target: str, assets: tuple[str, ...]):
    """The Artifact `target` names, one of `assets`: an asset name goes through the recipe's plan (--recipe, --set);
    anything else is looked up in the store under --artifact-root."""
    from engine.store.home import Home
    if target in assets:
        _, overrides = checked_recipe(args)
        tuneline = tuneline_resource(args.recipe, args.artifact_root, overrides)
        fingerprint = tuneline.plan()[target].fingerprint
        found = tuneline.home().store().lookup(target, fingerprint)
        if found is None:
            raise TunelineError(f"{target} {fingerprint} (what recipe {args.recipe!r} implies) is not built under "
                                f"{tuneline.home().root}: run `tuneline run` first, or name a built artifact's "
                                "fingerprint or directory")
        return found
    home = Home(args.artifact_root)
    found = home.store().find(target) if home.artifacts.is_dir() else None
    if found is None:
        raise TunelineError(f"{target!r}: neither an asset ({', '.join(assets)}) nor the fingerprint (or a unique "
                            f"prefix) or directory of an artifact under {Path(args.artifact_root).resolve()}")
    if found.asset not in assets:
        raise TunelineError(f"{target!r} is a {found.asset} artifact ({found.path}); expected one of "
                            f"{', '.join(assets)}")
    return found
