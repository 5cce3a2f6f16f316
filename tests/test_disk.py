"""Bounded disk: at most save_total_limit checkpoints while training (never the one a resume needs), a space check
before a training or export stage, a disk that fills mid-build leaves the published artifacts as they were, and
lock files of fingerprints that are gone are removed by retention."""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import engine.train.sft
from engine.build import build_stage
from engine.graph import EVALUATIONS, GPTQ_MODEL, MERGED_MODEL, SFT_ADAPTER
from engine.models.footprint import ExportWrites
from engine.models.device import PRECISION_KEYS
from engine.plan import make_plan
from engine.recipe import load_recipe
from engine.stage import RecipeView, Stage
from engine.store.home import Home, open_locked
from engine.store.space import SKIP, DiskFull, NotEnoughSpace, check_space, estimate
from engine.train.checkpoints import COMPLETE, last_complete_checkpoint, rotate
from engine.train.child import read_result, spec_of, write_spec
from tests.processes import stop_process_group

STEPS = {"sft.max_steps": 12, "sft.save_steps": 1, "sft.logging_steps": 1, "sft.per_device_train_batch_size": 8}
KEYS = ("sft", "data.cutoff_len", "launcher", *PRECISION_KEYS)  # launcher: as the asset locates it


# --- checkpoints ----------------------------------------------------------------------------------------------

def checkpoints(trainer_dir: Path, *steps: int, complete: tuple[int, ...] = ()) -> None:
    for step in steps:
        (trainer_dir / f"checkpoint-{step}").mkdir(parents=True)
        if step in complete:
            (trainer_dir / f"checkpoint-{step}" / COMPLETE).write_text(str(step))


def names(trainer_dir: Path) -> list[str]:
    return sorted((p.name for p in trainer_dir.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


def test_rotation_keeps_the_last_complete_checkpoint_and_drops_half_ones(tmp_path):
    checkpoints(tmp_path, 1, 2, 3, 4, 104, complete=(1, 2, 3, 4))  # 104: half of one a kill left (a numbered later)
    rotate(tmp_path, 2, saving=True)  # before checkpoint-5 is written: it makes the second
    assert names(tmp_path) == ["checkpoint-4"]
    checkpoints(tmp_path, 5, complete=(5,))
    rotate(tmp_path, 2, saving=False)
    assert names(tmp_path) == ["checkpoint-4", "checkpoint-5"]
    rotate(tmp_path, 1, saving=True)  # limit 1: the last complete one stays while the next is written
    assert names(tmp_path) == ["checkpoint-5"]
    checkpoints(tmp_path, 6)  # written, not yet marked: transformers rotates here, before our marker
    rotate(tmp_path, 1, saving=True)
    assert names(tmp_path) == ["checkpoint-5"]
    assert rotate(tmp_path, None, saving=False) == [] and load_recipe("tiny")[0].sft.save_total_limit == 2


def sft_spec(tmp_path: Path, tiny_model_dir: Path, formatted_dir: Path) -> Path:
    recipe = load_recipe("tiny", STEPS)[0]
    out = tmp_path / "work"
    out.mkdir(parents=True)
    spec = spec_of("sft_adapter", "disk", engine.train.sft.train_sft_adapter, KEYS, recipe,
                   {"pt_model": tiny_model_dir, "formatted_data": formatted_dir}, out, tmp_path / "home")
    return write_spec(spec, tmp_path / "run")


def watch(spec: Path, until_step: int | None, seen: dict) -> subprocess.Popen:
    """Start the training process and sample its work directory every few ms until it ends (or, with
    `until_step`, until a complete checkpoint of at least that step exists); `seen` keeps the most checkpoint
    directories and bytes in the work directory at once."""
    work = spec.parent.parent / "work"
    log = open(spec.parent.parent / f"stderr-{time.monotonic_ns()}.txt", "w+")
    process = subprocess.Popen([sys.executable, "-m", "engine.train", "sft_adapter", "--spec", str(spec)],
                               env=os.environ | {"PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while process.poll() is None and time.monotonic() < deadline:
            found = names(work / "_trainer") if (work / "_trainer").is_dir() else []
            seen["checkpoints"] = max(seen.get("checkpoints", 0), len(found))
            size = 0
            for folder, _, files in os.walk(work):  # os.walk skips a folder rotated away while it is read
                for name in files:
                    try:
                        size += os.stat(os.path.join(folder, name)).st_size
                    except FileNotFoundError:  # rotated away meanwhile
                        pass
            seen["bytes"] = max(seen.get("bytes", 0), size)
            last = last_complete_checkpoint(work / "_trainer")
            if until_step and last and int(last.name.split("-")[1]) >= until_step:
                os.killpg(process.pid, signal.SIGKILL)  # an OOM kill: no chance to clean up
                process.wait(30)
                break
            time.sleep(0.005)
        assert process.poll() is not None, "the training process did not end within 600 s"
    finally:
        stop_process_group(process)
        log.seek(0)
        seen["stderr"] = log.read()[-3000:]
        log.close()
    return process


@pytest.mark.slow
def test_training_at_save_steps_1_holds_at_most_2_checkpoints_and_a_kill_still_resumes(tmp_path, tiny_model_dir,
                                                                                      formatted_dir):
    spec = sft_spec(tmp_path, tiny_model_dir, formatted_dir)
    trainer_dir = tmp_path / "work" / "_trainer"
    seen: dict = {}
    watch(spec, until_step=5, seen=seen)
    last = last_complete_checkpoint(trainer_dir)
    assert last is not None and len(names(trainer_dir)) <= 2, (names(trainer_dir), seen["stderr"])
    process = watch(spec, until_step=None, seen=seen)
    assert process.returncode == 0, seen["stderr"]
    result = read_result(spec)
    assert result["resumed_from_step"] == int(last.name.split("-")[1]) >= 5 and result["steps"] == 12
    assert seen["checkpoints"] == 2  # sampled every few ms over 12 saves: never a third
    recipe = load_recipe("tiny", STEPS)[0]
    counted = estimate(SFT_ADAPTER, RecipeView(recipe, KEYS, "sft_adapter"), {"pt_model": tiny_model_dir})
    print(f"full SFT of the tiny model: peak work directory {seen['bytes']:,} bytes, estimate {counted.total:,} "
          f"({counted.counts})")
    assert seen["bytes"] <= counted.total <= 3 * seen["bytes"]  # on the large side, not wildly


# --- the space check --------------------------------------------------------------------------------------------

CONFIG = {"dtype": "bfloat16", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 8}  # Llama-3-8B's shapes


def sparse_model(directory: Path, size: int) -> Path:
    """A model folder whose weights file reports `size` bytes and occupies none (a sparse file): a model larger
    than any disk here, without writing it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    with open(directory / "model.safetensors", "wb") as handle:
        handle.truncate(size)
    return directory


def test_a_7b_model_s_training_estimate_counts_checkpoints_adapter_and_optimizer(tmp_path):
    model = sparse_model(tmp_path / "pt_model", 14_000_000_000)  # 7B parameters in bf16
    keys = ("sft", "data.cutoff_len")
    lora = load_recipe("tiny", {"sft.finetuning_type": "lora", "sft.lora_rank": 8})[0]
    counted = estimate(SFT_ADAPTER, RecipeView(lora, keys, "sft_adapter"), {"pt_model": model})
    trainable = 8 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096)) * 32
    assert trainable == 20_971_520  # PEFT's count for Llama-3-8B-shaped layers at rank 8, all linear layers
    others, state = len(json.dumps(CONFIG)), 1 << 20  # the folder's config.json; the trainer's state files
    assert counted.total == 2 * (12 * trainable + others + state) + 4 * trainable + others
    full = load_recipe("tiny", {"sft.finetuning_type": "full", "sft.save_total_limit": 3})[0]
    counted = estimate(SFT_ADAPTER, RecipeView(full, keys, "sft_adapter"), {"pt_model": model})
    assert counted.total == 3 * (14_000_000_000 + 8 * 7_000_000_000 + others + state) + 14_000_000_000 + others
    assert "3 checkpoints" in counted.counts
    pointer = tmp_path / "pt_off"  # pt off: pt_model's artifact names the base model's folder
    pointer.mkdir()
    (pointer / "local_model.json").write_text(json.dumps({"path": str(model)}))
    assert estimate(SFT_ADAPTER, RecipeView(full, keys, "sft_adapter"), {"pt_model": pointer}) == counted
    gptq = estimate(GPTQ_MODEL, None, {"merged_model": model})
    assert gptq.total == 7_000_000_000 + others and estimate(EVALUATIONS["sft"], None, {"pt_model": model}) is None


def disk_stage(name: str, parents: tuple[str, ...] = (), training: bool = False, keys=("sft.seed",),
               writes=None) -> Stage:
    return Stage(name, entry=write_weights, parents=parents, keys=keys, training=training, writes=writes)


SIZES: dict[str, int] = {}  # bytes each test stage writes
CALLS: list[str] = []


def write_weights(run) -> dict:
    """A stage's entry point for these tests: writes SIZES[stage] bytes in 64 KiB chunks (a disk that fills
    raises ENOSPC in the middle), with a config.json, as a model folder."""
    CALLS.append(run.stage)
    (run.out / "config.json").write_text(json.dumps({"dtype": "float32"}))
    chunk = os.urandom(65536)
    with open(run.out / "model.safetensors", "wb") as handle:
        for _ in range(SIZES[run.stage] // len(chunk)):
            handle.write(chunk)
            handle.flush()
    return {"bytes": SIZES[run.stage]}


def test_an_export_larger_than_the_free_space_stops_before_it_runs_in_one_line(tmp_path, monkeypatch):
    stages = [disk_stage("pt_model", keys=("pt.dataset",)), disk_stage("merged_model", parents=("pt_model",),
                                                                          writes=ExportWrites("pt_model"))]
    recipe = load_recipe("tiny")[0]
    plan = make_plan(stages, recipe)
    home = Home(tmp_path / "home")
    SIZES["pt_model"] = 32 * 65536
    pt = build_stage(home, plan, "pt_model", recipe)
    real = shutil.disk_usage  # a disk with 1 MB free: the parent is hashed at use, so it cannot be a sparse giant

    def almost_full(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 10**6, 10**6)
    monkeypatch.setattr("engine.store.space.shutil.disk_usage", almost_full)
    CALLS.clear()
    with pytest.raises(NotEnoughSpace) as stopped:
        build_stage(home, plan, "merged_model", recipe)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith("merged_model needs about 2.1 MB on disk (the exported "
                                                      "model 2.1 MB)"), message
    assert re.search(rf"\) and {re.escape(str(home.artifacts))} has 1.0 MB free: free some space, or set "
                     rf"{SKIP}=1 to run anyway$", message), message
    assert CALLS == [] and home.store().lookup("merged_model", plan["merged_model"].fingerprint) is None
    said = []
    monkeypatch.setenv(SKIP, "1")  # the operator's override: said, then it runs
    counted = check_space(MERGED_MODEL, None, {"pt_model": pt.path}, tmp_path / "work", said.append)
    assert 32 * 65536 < counted.total < 32 * 65536 + 4096 and said  # the weights, the folder's few small files
    SIZES["merged_model"] = 65536
    built = build_stage(home, plan, "merged_model", recipe)
    assert CALLS == ["merged_model"] and built.path.is_dir()


# --- a disk that fills -----------------------------------------------------------------------------------------

def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture()
def small_filesystem(tmp_path):
    """A 24 MiB tmpfs (a real filesystem that fills: ENOSPC from the kernel), where this process may mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                           text=True, timeout=30)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({tried.stderr.strip()}); "
                    "test_a_disk_full_in_publish_* injects the fault instead")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def grow(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True, capture_output=True, timeout=30)


def assert_unharmed(home: Home, earlier: dict[Path, dict[str, str]], failed: str, fingerprint: str) -> None:
    """The artifacts published before are byte for byte as they were, the failed one is not visible, and the
    catalog still reads and lists the earlier ones."""
    assert {path: digests(path) for path in earlier} == earlier
    assert not home.artifact_dir(failed, fingerprint).exists() and home.store().lookup(failed, fingerprint) is None
    assert sorted(Path(m["path"]) for m in home.store().manifests()) == sorted(earlier)
    recorded = {row[0] for row in home.catalog().query("SELECT path FROM artifacts")}
    assert {str(p) for p in earlier} <= recorded and not any(str(home.artifact_dir(failed, fingerprint)) == r
                                                             for r in recorded)


@pytest.mark.parametrize("training", [False, True], ids=["export", "training"])
def test_a_disk_that_fills_mid_stage_leaves_the_earlier_artifacts_byte_identical(small_filesystem, training):
    stages = [disk_stage("weights", keys=()), disk_stage("tuned", parents=("weights",), training=training)]
    home = Home(small_filesystem / "home")
    old, new = load_recipe("tiny", {"sft.seed": 1})[0], load_recipe("tiny", {"sft.seed": 2})[0]
    old_plan, new_plan = make_plan(stages, old), make_plan(stages, new)
    SIZES.update({"weights": 1 << 20, "tuned": 4 << 20})
    built = [build_stage(home, old_plan, "weights", old), build_stage(home, old_plan, "tuned", old)]
    earlier = {a.path: digests(a.path) for a in built}
    SIZES["tuned"] = 64 << 20  # the new recipe's model: more than the 24 MiB disk holds
    fingerprint = new_plan["tuned"].fingerprint
    with pytest.raises(DiskFull) as full:
        build_stage(home, new_plan, "tuned", new)
    assert full.value.errno == errno.ENOSPC and "\n" not in str(full.value)
    assert str(full.value).startswith(f"tuned: the disk is full (No space left on device) writing "
                                      f"into {home.work_dir('tuned', fingerprint)}; nothing of it was "
                                      "published and earlier artifacts are untouched: free some space, then run the "
                                      "same command to " + ("resume from its last complete checkpoint" if training
                                                            else "build it again")), str(full.value)
    assert_unharmed(home, earlier, "tuned", fingerprint)
    grow(small_filesystem, "160m")  # space freed: the next run succeeds
    rebuilt = build_stage(home, new_plan, "tuned", new)
    assert (rebuilt.path / "model.safetensors").stat().st_size == 64 << 20 and rebuilt.metrics["bytes"] == 64 << 20
    assert {path: digests(path) for path in earlier} == earlier


def test_a_disk_full_in_publish_leaves_no_half_artifact_and_the_rerun_publishes(tmp_path, monkeypatch):
    """Fault injection where no filesystem can be mounted: the manifest write, the last write before the rename
    that publishes, raises ENOSPC."""
    stages = [disk_stage("weights"), disk_stage("exported", parents=("weights",))]
    home = Home(tmp_path / "home")
    recipe = load_recipe("tiny")[0]
    plan = make_plan(stages, recipe)
    SIZES.update({"weights": 1 << 20, "exported": 1 << 20})
    earlier = {(a := build_stage(home, plan, "weights", recipe)).path: digests(a.path)}
    write_text = Path.write_text

    def full_disk(path, *args, **kwargs):
        if path.name == "manifest.json":
            write_text(path, "{\"asset\": ")  # what a filling disk leaves: part of the file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(DiskFull, match=r"^exported: the disk is full \(No space left on device\) writing .*manifest"):
        build_stage(home, plan, "exported", recipe)
    monkeypatch.undo()
    assert_unharmed(home, earlier, "exported", plan["exported"].fingerprint)
    assert build_stage(home, plan, "exported", recipe).metrics["bytes"] == 1 << 20
    assert {path: digests(path) for path in earlier} == earlier


# --- lock files -------------------------------------------------------------------------------------------------

def test_retention_removes_the_lock_files_of_fingerprints_that_are_gone_and_only_those(tmp_path):
    stages = [disk_stage("weights")]
    home = Home(tmp_path / "home")
    SIZES["weights"] = 65536
    kept = [build_stage(home, make_plan(stages, r), "weights", r)
            for r in (load_recipe("tiny", {"sft.seed": s, "retention.keep_last": 2})[0] for s in (1, 2, 3))]
    assert not kept[0].path.exists()  # retention removed the oldest artifact, and its lock file with it
    assert sorted(p.name for p in home.locks.glob("weights-*.lock")) == sorted(
        f"weights-{a.fingerprint}.lock" for a in kept[1:])
    home.work_dir("weights", "c" * 16).mkdir()  # an interrupted build: its lock stays
    for fingerprint in ("a" * 16, "b" * 16, "c" * 16):
        home.lock_path("weights", fingerprint).touch()
    home.lock_path("weights_x", "d" * 16).touch()  # another asset's
    with home.lock("weights", "b" * 16):  # held by a reader or a build: it stays
        removed = home.remove_stale_locks("weights")
    assert removed == [home.lock_path("weights", "a" * 16)] and not removed[0].exists()
    assert all(home.lock_path(*k).exists() for k in [("weights", "b" * 16), ("weights", "c" * 16),
                                                     ("weights_x", "d" * 16)])


def test_a_run_that_opened_a_lock_file_retention_then_unlinks_locks_the_new_file(tmp_path):
    """The race: a run opens <asset>-<fp>.lock and waits for it while retention holds it and unlinks it. Once it
    gets the lock it must notice that the path names another file (or none) and lock that one, or two runs would
    each hold "the" lock of one fingerprint."""
    home = Home(tmp_path)
    path = home.lock_path("pt_model", "e" * 16)
    retention = open_locked(path, fcntl.LOCK_EX, wait=None)  # taken as remove_stale_locks takes it
    waiting, inside = threading.Event(), threading.Event()
    release = threading.Event()

    def build():
        with home.lock("pt_model", "e" * 16, waiting=lambda _: waiting.set()):
            inside.set()
            release.wait(60)
    runner = threading.Thread(target=build)
    runner.start()
    try:
        assert waiting.wait(60)  # it opened the file and waits for the lock
        path.unlink()  # retention's step: unlink while holding, then let go
        retention.close()
        assert inside.wait(60)
        assert path.exists() and home.try_lock_exclusive("pt_model", "e" * 16) is None  # it holds the file at path
    finally:
        release.set()
        runner.join(60)
    assert not runner.is_alive()
    held = home.try_lock_exclusive("pt_model", "e" * 16)
    assert held is not None
    with held:
        pass


def test_every_stage_that_writes_weights_declares_its_disk_use():
    """A training stage or an export that declares no `writes` would start without the space check."""
    from engine.graph import STAGES
    writers = {s.name for s in STAGES if s.training} | {"merged_model", "gptq_model", "awq_model"}
    assert {s.name for s in STAGES if s.writes is not None} == writers
