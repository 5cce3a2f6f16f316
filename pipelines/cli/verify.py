"""`tuneline verify`: re-hash artifacts (or a copied export) against the digests recorded at publish, one line each.

Exit 0 when every artifact is intact (or predates digests), 1 when any is damaged (as `sha256sum --check`
does), 2 for a target that names nothing (the CLI's user-error code)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import TunelineError
from pipelines.cli.options import artifact_root_option


def register(command) -> None:
    parser = command("verify", "re-hash artifacts against the digests recorded at publish", verify)
    parser.add_argument("targets", nargs="*", metavar="ASSET|FINGERPRINT|PATH",
                        help="an asset name (all its artifacts), a fingerprint (a unique prefix is enough), or an "
                             "artifact or export directory, also a copy of one elsewhere (checked against its "
                             "manifest.json or lineage.json)")
    parser.add_argument("--all", action="store_true", help="every artifact under the artifact root")
    artifact_root_option(parser)


def verify(args: argparse.Namespace) -> int:
    from engine.store.home import Home
    if not args.targets and not args.all:
        raise TunelineError("verify: name an asset, a fingerprint or a directory, or pass --all")
    home = Home(args.artifact_root)
    directories = [d for target in args.targets for d in directories_of(home, target)]
    if args.all:
        directories += sorted(p.parent for p in home.artifacts.glob("*/*/manifest.json")
                              if not p.parent.name.startswith("."))  # not those set aside by --rebuild
    damaged = [d for d in dict.fromkeys(directories) if not report(home, d)]
    return 1 if damaged else 0


def directories_of(home, target: str) -> list[Path]:
    """The artifact directories a target names: a directory as given, an asset's artifacts, or a fingerprint's."""
    path = Path(target)
    if path.is_dir() and ((path / "manifest.json").is_file() or (path / "lineage.json").is_file()):
        return [path.resolve()]
    if (home.artifacts / target).is_dir() and "/" not in target:
        found = sorted(p.parent for p in (home.artifacts / target).glob("*/manifest.json")
                       if not p.parent.name.startswith("."))
        if found:
            return found
    artifact = home.store().find(target) if home.artifacts.is_dir() else None
    if artifact is None:
        raise TunelineError(f"verify {target}: neither an artifact or export directory (expected manifest.json or "
                            f"lineage.json in it), an asset with artifacts, nor a fingerprint (or a unique prefix) "
                            f"of an artifact under {home.artifacts}")
    return [artifact.path]


def report(home, directory: Path) -> bool:
    """Print one line for the artifact in `directory`; False when it is damaged (recorded as its failed
    `files_intact` check when it lives in this home's catalog)."""
    from engine.store.digests import FILES_INTACT, directory_record, problems
    try:
        asset, fingerprint, files = directory_record(directory)
    except (OSError, ValueError) as exc:  # a manifest or lineage.json that cannot be read is damage too
        print(f"DAMAGED     {directory.parent.name} {directory.name}  {directory}: unreadable record ({exc})")
        return False
    if files is None:
        print(f"no digests  {asset} {fingerprint}  {directory} (published before digests were recorded)")
        return True
    found = problems(directory, files)
    if not found:
        size = sum(f.get("size", 0) for f in files.values())
        print(f"ok          {asset} {fingerprint}  {directory} ({len(files)} files, {size / 1e6:.1f} MB)")
        return True
    print(f"DAMAGED     {asset} {fingerprint}  {directory}: {'; '.join(found)}")
    if directory.is_relative_to(home.artifacts.resolve()) and home.catalog_path.is_file():
        home.catalog().record_check(fingerprint, FILES_INTACT, False, found[0])
    return False
