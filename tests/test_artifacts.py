from engine.store.artifacts import ArtifactStore


def publish(store, asset, fp, tmp_path, text="x"):
    work = tmp_path / f"work-{asset}-{fp}"
    work.mkdir()
    (work / "file.txt").write_text(text)
    return store.publish(asset, fp, work, {"asset": asset, "fingerprint": fp, "metrics": {"value": 1}})


def test_publish_renames_the_work_directory_into_place_whole(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    (tmp_path / "artifacts" / "a").mkdir(parents=True)
    artifact = publish(store, "a", "f1", tmp_path)
    assert artifact.path == tmp_path / "artifacts" / "a" / "f1" and not artifact.cache_hit
    assert sorted(p.name for p in artifact.path.iterdir()) == ["file.txt", "manifest.json"]
    assert store.lookup("a", "f1").metrics == {"value": 1} and store.lookup("a", "f1").cache_hit
    assert store.lookup("a", "f2") is None


def test_find_by_fingerprint_prefix_or_path(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    (tmp_path / "artifacts" / "a").mkdir(parents=True)
    art = publish(store, "a", "0123456789abcdef", tmp_path)
    assert store.find("01234567").path == art.path
    assert store.find(str(art.path)).fingerprint == art.fingerprint
    assert store.find("ffffffffffff") is None
    assert [m["fingerprint"] for m in store.manifests()] == ["0123456789abcdef"]


def test_manifest_records_library_versions():
    from engine.store.artifacts import library_versions
    versions = library_versions()
    assert versions["torch"].startswith("2.13") and versions["trl"] == "1.16.0"
