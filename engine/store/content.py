"""Content identity by hashing: files, trees of files, a local checkpoint. What a data source or a tokenizer is made
of is said by the data and models packages (engine/data/sources.py, engine/models/identity.py), which hash here.

A file's identity is the sha256 of its bytes, never its modification time. Hashing a 15 GB checkpoint on
every run would cost minutes, so digests are remembered by (size, mtime, inode, ctime), as git's index
does: a file whose stat changed is hashed again, and any write changes ctime, which no user can set back. A file
written in the last second is not remembered (git's "racily clean" entry): its next write could fall in the same
timestamp tick and leave its stat unchanged. The artifact digests (engine/store/digests.py) hash through here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

RACY_NS = 1_000_000_000  # a file changed less than this ago is hashed, not remembered


class ContentHasher:
    """sha256 digests of files, remembered in memory and, given a cache file, across processes."""

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = cache_file
        self.known: dict[str, list] = {}
        self.lock = threading.Lock()
        if cache_file and cache_file.is_file():
            try:
                self.known = json.loads(cache_file.read_text())
            except (OSError, ValueError):  # a damaged cache is only a slower run
                self.known = {}
        self.dirty = False

    def file(self, path: Path) -> str:
        """The file's sha256, read again only when its stat changed (or it changed within the last second)."""
        key, signature = str(path.resolve()), stat_signature(path)
        with self.lock:
            hit = self.known.get(key)
            if hit and hit[:4] == signature:
                return hit[4]
        with path.open("rb") as handle:
            value = hashlib.file_digest(handle, "sha256").hexdigest()
        after = stat_signature(path)
        if after == signature and time.time_ns() - after[3] > RACY_NS:  # unchanged while read, and not racily clean
            with self.lock:
                self.known[key] = [*signature, value]
                self.dirty = True
        return value

    def tree(self, root: Path, files: list[Path]) -> str:
        """One digest over files (names relative to `root`, and bytes): changes when a file is added,
        removed, renamed or edited."""
        digest = hashlib.sha256()
        for file in sorted(files):
            name = file.relative_to(root) if root.is_dir() else file.name
            digest.update(str(name).encode() + b"\0" + self.file(file).encode())
        return digest.hexdigest()

    def save(self) -> None:
        """Write the remembered digests (atomically; a lost race only costs a re-hash)."""
        if not (self.cache_file and self.dirty):
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}")
        with self.lock:
            tmp.write_text(json.dumps(self.known))
            self.dirty = False
        os.replace(tmp, self.cache_file)


def stat_signature(path: Path) -> list[int]:
    """What a remembered digest is keyed on: size, mtime, inode, ctime (nanoseconds)."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


def checkpoint_identity(model_dir: Path, hasher: ContentHasher) -> dict:
    """A local checkpoint's identity: the digest of every file in it (weights, config, tokenizer, template), or of
    the one GGUF file that holds them all."""
    if model_dir.is_file():
        return {"path": str(model_dir.resolve()), "sha256": hasher.file(model_dir)}
    files = [p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return {"path": str(model_dir.resolve()), "sha256": hasher.tree(model_dir, files)}
