"""The home is checked: an artifact root, or a folder in it, that group or others can write, or another user owns, is
refused at the start of a run in one line with the command that fixes it (real chmod/chown on temporary folders; the
check reads the mode bits, so it holds when the tests run as root too)."""

import contextlib
import os
import stat

import pytest

from engine.store.home import PROTECTED, UnsafeHome, check_home

FOLDERS = [*(name or "." for name in PROTECTED), "artifacts/sft_adapter"]


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def make_home(tmp_path):
    home = tmp_path / "home"
    for name in FOLDERS:
        (home / name).mkdir(parents=True, exist_ok=True)
        (home / name).chmod(0o755)
    return home


def test_a_home_of_the_user_alone_passes(tmp_path):
    assert stat.S_IMODE(tmp_path.stat().st_mode) & 0o022 == 0  # pytest's own temporary folders pass too
    check_home(make_home(tmp_path))
    check_home(tmp_path / "not-made-yet")


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("bits, who", [(stat.S_IWGRP, "group"), (stat.S_IWOTH, "others"),
                                       (stat.S_IWGRP | stat.S_IWOTH, "group and others")])
def test_a_folder_group_or_others_can_write_is_refused_with_the_chmod_that_fixes_it(tmp_path, folder, bits, who):
    home = make_home(tmp_path)
    target = (home / folder).resolve()
    target.chmod(0o755 | bits)
    with pytest.raises(UnsafeHome) as refused:
        check_home(home, "--artifact-root")
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"--artifact-root {home}: {target} is writable by {who} (mode d")
    assert message.endswith(f"(expected no group or other write: `chmod go-w {target}`)")
    os.system(f"chmod go-w {target}")  # the command the message gives
    check_home(home)


def test_a_link_is_judged_by_the_folder_it_leads_to(tmp_path):
    home, shared = make_home(tmp_path), tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (home / "artifacts" / "dpo_adapter").symlink_to(shared)
    with pytest.raises(UnsafeHome, match=f"{shared} is writable by group and others"):
        check_home(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
@pytest.mark.parametrize("folder", [".", "artifacts", "artifacts/sft_adapter"])
def test_a_folder_another_user_owns_is_refused(tmp_path, folder):
    home = make_home(tmp_path)
    os.chown(home / folder, 54321, -1)
    with pytest.raises(UnsafeHome, match=rf"{(home / folder).resolve()} is owned by uid 54321, not by root; .*"
                                         rf"`chown -R root {home}`"):
        check_home(home)


def test_what_a_run_makes_after_the_check_passes_the_next_check_under_a_umask_002(tmp_path):
    with umask(0o002):
        check_home(tmp_path / "home")
        (tmp_path / "home" / "artifacts" / "raw_data" / ".work-x").mkdir(parents=True)
        (tmp_path / "home" / "locks").mkdir()
        assert os.umask(0o002) == 0o022
    check_home(tmp_path / "home")
    assert stat.S_IMODE((tmp_path / "home" / "artifacts" / "raw_data").stat().st_mode) == 0o755


def test_tuneline_run_refuses_before_writing_anything(tmp_path, capsys):
    from pipelines.cli import main
    home = make_home(tmp_path)
    (home / "dagster").rmdir()
    (home / "artifacts").chmod(0o775)
    assert main(["run", "--select", "raw_data", "--artifact-root", str(home)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"`chmod go-w {home / 'artifacts'}`" in err[0], err
    assert not (home / "dagster").exists() and not (home / "catalog.duckdb").exists()


def test_the_dagster_resource_refuses_too(tmp_path):
    from assets.resource import Tuneline
    home = make_home(tmp_path)
    (home / "locks").chmod(0o777)
    with pytest.raises(UnsafeHome, match=rf"artifact_root \(TUNELINE_HOME\) {home}: {home / 'locks'} is writable"):
        Tuneline(artifact_root=str(home)).home()
