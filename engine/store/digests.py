"""File digests of an artifact: listed at publish (each file's size and SHA-256), checked before anything reads it.

A manifest's `files` maps each file's path relative to the artifact to {"size", "sha256"} (a symbolic link to
{"link": its target}: a deployment links the export it serves, which is checked as an artifact of its own).
manifest.json is not listed (it cannot hold its own digest): it protects against damage and stray edits, not
against someone who can write the home and rewrites both a file and its manifest. Files added after publish
are not judged; a listed file that is missing, of another size or another digest is damage.

Libraries write the files (save_pretrained), so the digests cannot be computed while writing: they are computed
at publish, reading each file once while it is likely still in the page cache. A digest is remembered in this
process only (never on disk) by the file's stat, as engine/store/content.py remembers every digest: a later check
in the same run reads nothing again, and a file written in the last second is not remembered.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import TunelineError
from engine.store.content import ContentHasher

MANIFEST = "manifest.json"
LINEAGE = "lineage.json"
FILES_INTACT = "files_intact"  # the check a damaged artifact fails, in the catalog and in Dagster
_process_hasher = ContentHasher()  # this process only, never on disk


class ArtifactDamaged(TunelineError):
    """A published artifact's file differs from what its manifest recorded at publish."""

    def __init__(self, asset: str, fingerprint: str, path: Path, problems: list[str]):
        self.asset, self.fingerprint, self.path, self.problems = asset, fingerprint, path, problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        self.detail = f"{problems[0]}{more}"
        super().__init__(f"{asset} {fingerprint} is damaged: {self.detail} in {path}; nothing was built from it: "
                         f"rebuild it with `tuneline run --rebuild {asset}` (the damaged copy is kept aside)")


def sha256(path: Path) -> str:
    """The file's SHA-256, read once per (size, mtime, inode, ctime) in this process."""
    return _process_hasher.file(path)


def file_digests(root: Path, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict]:
    """Every file under `root` (relative path -> size and sha256; a link -> its target), but the top-level `skip`."""
    files: dict[str, dict] = {}
    for folder, dirs, names in os.walk(root):  # links are not followed: a link is recorded as a link
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if relative in skip:
                continue
            if path.is_symlink():
                files[relative] = {"link": os.readlink(path)}
            else:
                files[relative] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return dict(sorted(files.items()))


def problems(root: Path, files: dict[str, dict], hashing: bool = True) -> list[str]:
    """What differs from `files` under `root`: a missing file, another size, another digest (`hashing`: read
    every file; else sizes and links only)."""
    found = []
    for relative, expected in files.items():
        path = root / relative
        if "link" in expected:
            target = os.readlink(path) if path.is_symlink() else None
            if target != expected["link"]:
                found.append(f"{relative}: link to {target or 'nothing'}, expected a link to {expected['link']}")
            continue
        if not path.is_file():
            found.append(f"{relative}: missing, expected {expected['size']} bytes")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            found.append(f"{relative}: {size} bytes, expected {expected['size']}")
        elif hashing and (digest := sha256(path)) != expected["sha256"]:
            found.append(f"{relative}: sha256 {digest[:12]}…, expected {expected['sha256'][:12]}… (same size)")
    return found


def check(asset: str, fingerprint: str, root: Path, manifest: dict, hashing: bool = True) -> bool:
    """Raise ArtifactDamaged when a listed file differs; False when the artifact records no digests."""
    files = manifest.get("files")
    if files is None:  # published before digests were recorded
        return False
    if found := problems(root, files, hashing):
        raise ArtifactDamaged(asset, fingerprint, root, found)
    return True


def directory_record(path: Path) -> tuple[str, str, dict[str, dict] | None]:
    """(asset, fingerprint, listed files) of an artifact directory or a copied export: its manifest's files, and
    its lineage.json's (an export's own files, as written), both checked; None when it records no digests."""
    import json
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    lineage = json.loads((path / LINEAGE).read_text()) if (path / LINEAGE).is_file() else {}
    asset = manifest.get("asset") or (lineage.get("export") or {}).get("asset") or "directory"
    listed = manifest.get("files"), lineage.get("files")
    if listed == (None, None):
        return asset, manifest.get("fingerprint", path.name), None
    return asset, manifest.get("fingerprint", path.name), {**(listed[1] or {}), **(listed[0] or {})}


def check_directory(path: Path) -> bool:
    """Raise ArtifactDamaged when a file of this artifact or copied export differs from what it lists; False when
    it lists nothing (a plain model directory, or an artifact published before digests)."""
    asset, fingerprint, files = directory_record(path)
    if files is None:
        return False
    if found := problems(path, files):
        raise ArtifactDamaged(asset, fingerprint, path, found)
    return True
