"""Digests at publish, checked at use: a damaged artifact stops the next stage in one line, `tuneline verify` lists
it, `tuneline run --rebuild` sets it aside and builds it again, and an export's lineage.json checks a copy of it."""

import json
import os
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

from engine.build import DAMAGED_KEPT_DAYS, build_stage, remove_stale_temporaries, set_aside
from engine.export.docs import write_export_docs
from engine.plan import make_plan
from engine.recipe import load_recipe
from engine.serve.chat import load_chat_model
from engine.stage import Stage
from engine.store.digests import ArtifactDamaged
from engine.store.home import Home
from pipelines.cli import main

WEIGHTS = "adapter/adapter_model.safetensors"


def write_weights(run):
    (run.out / "adapter").mkdir()
    save_file({"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64)}, str(run.out / WEIGHTS))
    (run.out / "notes.txt").write_text("trained")
    return {"written": True}


def read_weights(run):
    from safetensors.torch import load_file
    weights = load_file(str(run.inputs["source"] / WEIGHTS))["w"]
    (run.out / "sum.txt").write_text(str(float(weights.sum())))
    return {"sum": float(weights.sum())}


SOURCE = Stage("source", entry=write_weights)
CHILD = Stage("child", entry=read_weights, parents=("source",))


@pytest.fixture
def built(tmp_path):
    recipe = load_recipe("tiny")[0]
    plan = make_plan([SOURCE, CHILD], recipe)
    home = Home(tmp_path / "root")
    return home, plan, recipe, build_stage(home, plan, "source", recipe)


def overwrite_64_bytes(path):
    with open(path, "r+b") as handle:  # same size: only the digest can tell
        handle.seek(path.stat().st_size - 128)
        handle.write(b"\xff" * 64)


def manifest(artifact):
    return json.loads((artifact.path / "manifest.json").read_text())


def test_the_manifest_lists_every_file_with_its_size_and_sha256(built):
    *_, source = built
    files = manifest(source)["files"]
    assert sorted(files) == [WEIGHTS, "notes.txt"]  # manifest.json itself is not listed
    import hashlib
    weights = source.path / WEIGHTS
    assert files[WEIGHTS] == {"size": weights.stat().st_size, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def test_a_same_size_overwrite_stops_the_child_in_one_line_and_verify_lists_it(built, capsys):
    home, plan, recipe, source = built
    overwrite_64_bytes(source.path / WEIGHTS)
    with pytest.raises(ArtifactDamaged) as raised:
        build_stage(home, plan, "child", recipe)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"source {source.fingerprint} is damaged: {WEIGHTS}: sha256 ")
    assert "(same size)" in message and "`tuneline run --rebuild source`" in message
    assert not home.store().path_for("child", plan["child"].fingerprint).exists()  # nothing built from it
    assert home.catalog().checks_of([source.fingerprint])[source.fingerprint] == {"files_intact": False}

    assert main(["verify", "--all", "--artifact-root", str(home.root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"DAMAGED     source {source.fingerprint}") and WEIGHTS in lines[0]


def test_a_truncated_file_is_not_a_cache_hit(built):
    home, plan, recipe, source = built
    weights = source.path / WEIGHTS
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    with pytest.raises(ArtifactDamaged, match=f"{WEIGHTS}: {size // 2} bytes, expected {size}"):
        build_stage(home, plan, "source", recipe)


def test_rebuild_sets_the_damaged_copy_aside_and_builds_it_again(built, capsys):
    home, plan, recipe, source = built
    intact = (source.path / WEIGHTS).read_bytes()
    overwrite_64_bytes(source.path / WEIGHTS)
    with pytest.raises(ArtifactDamaged):
        build_stage(home, plan, "child", recipe)
    aside = set_aside(home, "source", source.fingerprint)
    assert aside.name.startswith(f".damaged-{source.fingerprint}-")
    assert (aside / WEIGHTS).read_bytes() != intact  # kept as it was found
    rebuilt = build_stage(home, plan, "source", recipe)
    assert not rebuilt.cache_hit and (rebuilt.path / WEIGHTS).read_bytes() == intact
    assert home.catalog().checks_of([source.fingerprint])[source.fingerprint] == {"files_intact": True}
    assert build_stage(home, plan, "child", recipe).metrics["sum"] == float(sum(range(4096)))

    assert main(["verify", "--all", "--artifact-root", str(home.root)]) == 0  # what is set aside is not listed
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [["ok", "child"], ["ok", "source"]]
    assert remove_stale_temporaries(home, []) == [] and aside.is_dir()  # kept for days
    old = time.time() - (DAMAGED_KEPT_DAYS + 1) * 86400
    os.utime(aside, (old, old))
    assert remove_stale_temporaries(home, []) == [aside] and not aside.exists()


def test_an_artifact_published_before_digests_still_works(built, capsys):
    home, plan, recipe, source = built
    record = manifest(source)
    del record["files"]
    (source.path / "manifest.json").write_text(json.dumps(record))
    assert build_stage(home, plan, "source", recipe).cache_hit
    assert build_stage(home, plan, "child", recipe).metrics["sum"] == float(sum(range(4096)))
    assert main(["verify", "source", "--artifact-root", str(home.root)]) == 0
    assert capsys.readouterr().out.startswith(f"no digests  source {source.fingerprint}")


def test_lineage_json_digests_verify_a_copied_export(tmp_path, tiny_model_dir, capsys):
    export = tmp_path / "export"
    shutil.copytree(tiny_model_dir, export)
    write_export_docs(export, "Merged", {"base_model": None, "artifacts": {}, "data": {}}, {}, "merged_model")
    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(export, copy)
    assert not (copy / "manifest.json").exists()  # only lineage.json says what the files were
    assert main(["verify", str(copy)]) == 0
    assert capsys.readouterr().out.startswith("ok          merged_model my-model")
    load_chat_model(copy)

    overwrite_64_bytes(copy / "model.safetensors")
    assert main(["verify", str(copy)]) == 1
    assert "model.safetensors: sha256" in capsys.readouterr().out
    with pytest.raises(ArtifactDamaged, match="merged_model my-model is damaged: model.safetensors: sha256"):
        load_chat_model(copy)


@pytest.mark.slow
def test_the_tiny_graph_stops_at_a_damaged_sft_adapter_and_rebuild_restores_it(tmp_path, monkeypatch, capfd):
    """As an operator: 64 bytes of the SFT weights overwritten (same size) stop the next DPO run in one line naming
    the adapter, `verify --all` lists it, `--rebuild sft_adapter` sets it aside and builds it again, and a weights
    file cut in half is not a cache hit."""
    import dagster as dg
    root = tmp_path / "root"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    short = ["--artifact-root", str(root), "--set", "sft.max_steps=8", "--set", "dpo.max_steps=2"]
    assert main(["run", "--select", "*sft_adapter", *short]) == 0
    capfd.readouterr()
    [sft] = [p for p in (root / "artifacts" / "sft_adapter").iterdir() if not p.name.startswith(".")]
    weights = sft / "model" / "model.safetensors"
    overwrite_64_bytes(weights)

    assert main(["run", "--select", "dpo_adapter", *short]) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("tuneline:")]
    assert len(errors) == 1, errors
    assert f"sft_adapter {sft.name} is damaged: model/model.safetensors: sha256" in errors[0]
    assert "`tuneline run --rebuild sft_adapter`" in errors[0]
    assert not (root / "artifacts" / "dpo_adapter").exists()  # stopped before any work
    with dg.DagsterInstance.get() as instance:
        key = dg.AssetCheckKey(dg.AssetKey("sft_adapter"), "files_intact")
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert record.status.value == "FAILED"

    assert main(["verify", "--all", "--artifact-root", str(root)]) == 1
    damaged = [line for line in capfd.readouterr().out.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1 and f"sft_adapter {sft.name}" in damaged[0]

    assert main(["run", "--select", "sft_adapter", "--rebuild", "sft_adapter", *short]) == 0
    [aside] = (root / "artifacts" / "sft_adapter").glob(f".damaged-{sft.name}-*")
    assert (aside / "model" / "model.safetensors").stat().st_size == weights.stat().st_size
    assert main(["verify", "--all", "--artifact-root", str(root)]) == 0
    capfd.readouterr()

    os.truncate(weights, weights.stat().st_size // 2)
    assert main(["run", "--select", "sft_adapter", *short]) == 2
    assert "model/model.safetensors: " in capfd.readouterr().err


def test_a_link_is_recorded_by_its_target_and_a_retargeted_link_is_damage(tmp_path):
    """A deployment links the export it serves: the link is listed by its target, never followed."""
    from engine.store.digests import file_digests, problems
    export, other, deployment = tmp_path / "export", tmp_path / "other", tmp_path / "deployment"
    for folder in (export, other, deployment):
        folder.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (deployment / "serve.json").write_text("{}")
    (deployment / "served-name").symlink_to(export, target_is_directory=True)
    files = file_digests(deployment)
    assert files["served-name"] == {"link": str(export)} and sorted(files) == ["serve.json", "served-name"]
    assert problems(deployment, files) == []
    (deployment / "served-name").unlink()
    (deployment / "served-name").symlink_to(other, target_is_directory=True)
    assert problems(deployment, files) == [f"served-name: link to {other}, expected a link to {export}"]
