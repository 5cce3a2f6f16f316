"""Content identity of what a stage reads from outside the artifact root: data files, a local checkpoint.

A file's identity is the sha256 of its bytes, never its modification time. Hashing a 15 GB checkpoint on
every run would cost minutes, so digests are remembered by (size, mtime, inode, ctime), as git's index
does: a file whose stat changed is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


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
        stat = path.stat()
        key, signature = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
        with self.lock:
            hit = self.known.get(key)
            if hit and hit[:4] == signature:
                return hit[4]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
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


def source_files_under(path: Path, units: list[Path]) -> list[Path]:
    """Every file a source is read from: the files themselves, and every file inside a dataset folder."""
    files = []
    for unit in units:
        files += [unit] if unit.is_file() else sorted(p for p in unit.rglob("*") if p.is_file())
    return files


def source_identity(sources: dict, hasher: ContentHasher) -> dict[str, dict]:
    """What a set of registered sources' rows depend on: each registry entry and the digest of its files. A hub
    dataset that is no local directory is known by its id, subset, folder, split and revision: pin `revision` to
    make its content part of the fingerprint."""
    from engine.data.readers import source_files
    identity = {}
    for name, (entry, path) in sources.items():
        if entry.hub_key == "hf_hub_url" and not path.is_dir():
            digest = hashlib.sha256(json.dumps([entry.hf_hub_url, entry.subset, entry.folder, entry.split,
                                                entry.revision]).encode()).hexdigest()
        else:
            digest = hasher.tree(path, source_files_under(path, source_files(path, entry.allowed_roots)))
        identity[name] = {"entry": entry.model_dump(), "sha256": digest}
    return identity


def checkpoint_identity(model_dir: Path, hasher: ContentHasher) -> dict:
    """A local checkpoint's identity: the digest of every file in it (weights, config, tokenizer, template), or of
    the one GGUF file that holds them all."""
    if model_dir.is_file():
        return {"path": str(model_dir.resolve()), "sha256": hasher.file(model_dir)}
    files = [p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return {"path": str(model_dir.resolve()), "sha256": hasher.tree(model_dir, files)}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def tokenizer_identity(model_path: str, hasher: ContentHasher) -> dict:
    """A local checkpoint's tokenizer, by the content of its tokenizer files (a GGUF file's: the whole file)."""
    from engine.models.load import check_local_model
    root = check_local_model(model_path)
    if root.is_file():
        return {"sha256": hasher.file(root)}
    return {"sha256": hasher.tree(root, [root / name for name in TOKENIZER_FILES if (root / name).is_file()])}
