"""One way to remember a file's digest (engine/store/content.py), for data sources, checkpoints and artifact digests:
keyed on the file's stat, never remembered for a file written in the last second, and never trusted after a write."""

import hashlib
import os
import time

from engine.store import content, digests
from engine.store.content import ContentHasher


def test_a_file_written_in_the_last_second_is_hashed_but_not_remembered(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    hasher = ContentHasher()
    assert hasher.file(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert hasher.known == {}  # racily clean: its next write could leave the same stat


def test_an_older_file_is_remembered_and_a_same_size_rewrite_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    later = time.time_ns() + 2 * content.RACY_NS  # as if the file were two seconds old
    monkeypatch.setattr(content.time, "time_ns", lambda: later)
    hasher = ContentHasher()
    hasher.file(path)
    assert list(hasher.known) == [str(path.resolve())]
    stat = path.stat()
    with path.open("r+b") as handle:  # same size, mtime set back: ctime still moves
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert hasher.file(path) == hashlib.sha256(b"b" + b"a" * 999).hexdigest()


def test_artifact_digests_hash_through_the_same_hasher_and_only_in_memory(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 10)
    monkeypatch.setattr(digests, "_process_hasher", ContentHasher())
    assert digests.sha256(path) == hashlib.sha256(b"x" * 10).hexdigest()
    assert digests._process_hasher.cache_file is None
