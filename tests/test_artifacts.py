import pytest

from engine.artifacts import ArtifactStore


def write(out, text="x"):
    (out / "file.txt").write_text(text)
    return {"value": 1}


def test_same_inputs_hit_the_cache_and_a_config_change_does_not(tmp_path):
    store = ArtifactStore(tmp_path)
    first = store.build("a", [], {"k": 1}, "v1", write)
    again = store.build("a", [], {"k": 1}, "v1", lambda out: pytest.fail("recomputed a cached artifact"))
    assert not first.cache_hit and again.cache_hit and again.path == first.path
    assert again.metrics == {"value": 1}
    changed = store.build("a", [], {"k": 2}, "v1", write)
    code_changed = store.build("a", [], {"k": 1}, "v2", write)
    child = store.build("b", [first], {}, "v1", write)
    child_of_changed = store.build("b", [changed], {}, "v1", write)
    assert len({first.fingerprint, changed.fingerprint, code_changed.fingerprint}) == 3
    assert child.fingerprint != child_of_changed.fingerprint


def test_a_crash_leaves_no_half_written_artifact(tmp_path):
    store = ArtifactStore(tmp_path)

    def crash(out):
        (out / "partial.bin").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        store.build("a", [], {}, "v1", crash)
    assert list((tmp_path / "a").iterdir()) == []
    assert not store.build("a", [], {}, "v1", write).cache_hit


def test_find_by_fingerprint_prefix_or_path(tmp_path):
    store = ArtifactStore(tmp_path)
    art = store.build("a", [], {}, "v1", write)
    assert store.find(art.fingerprint[:8]).path == art.path
    assert store.find(str(art.path)).fingerprint == art.fingerprint
    assert store.find("ffffffffffff") is None


def test_retention_keeps_the_most_recently_used_and_rebuilds_the_removed(tmp_path):
    store = ArtifactStore(tmp_path, keep_last=2)
    a1 = store.build("a", [], {"k": 1}, "v", write)
    a2 = store.build("a", [], {"k": 2}, "v", write)
    assert store.build("a", [], {"k": 1}, "v", write).cache_hit  # a1 is now the most recently used
    a3 = store.build("a", [], {"k": 3}, "v", write)
    assert a1.path.is_dir() and a3.path.is_dir() and not a2.path.exists()
    again = store.build("a", [], {"k": 2}, "v", write)  # rebuilt on demand, same fingerprint
    assert not again.cache_hit and again.fingerprint == a2.fingerprint


def test_manifest_records_library_versions(tmp_path):
    store = ArtifactStore(tmp_path)
    manifest = store.manifest(store.build("a", [], {}, "v", write))
    assert manifest["versions"]["torch"].startswith("2.13") and manifest["versions"]["trl"] == "1.16.0"
