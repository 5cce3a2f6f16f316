"""The CLI's layout: every command module is wired into `tuneline`, and its help starts without torch or dagster."""

import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import pipelines.cli
from pipelines.cli import COMMANDS

NAMES = ["run", "eval", "serve", "train", "plan", "import-llamafactory", "lineage", "verify", "chat", "data", "export"]
HEAVY = ("torch", "dagster", "transformers", "trl", "datasets")


def test_every_module_that_registers_a_command_is_wired_into_main():
    modules = [name for _, name, _ in pkgutil.iter_modules(pipelines.cli.__path__) if name != "__main__"]
    registering = {name for name in modules if hasattr(importlib.import_module(f"pipelines.cli.{name}"), "register")}
    assert registering == {module.__name__.rpartition(".")[2] for module in COMMANDS}


def help_of(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, help text, the heavy libraries imported) of `tuneline ARGV` in a fresh process."""
    probe = (f"import json, sys\nfrom pipelines.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as exc:\n"
             f"    print(json.dumps([exc.code, [m for m in {HEAVY!r} if m in sys.modules]]), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"PYTHONPATH": os.getcwd()})
    code, imported = json.loads(result.stderr.strip().splitlines()[-1])
    return code, result.stdout, imported


def test_tuneline_help_lists_every_command_in_order_without_heavy_imports():
    code, text, imported = help_of(["--help"])
    assert code == 0 and imported == []
    assert "{" + ",".join(NAMES) + "}" in text.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize("command", NAMES)
def test_each_command_s_help_has_verbose_and_imports_nothing_heavy(command):
    code, text, imported = help_of([command, "--help"])
    assert code == 0 and imported == []
    assert text.startswith(f"usage: tuneline {command}") and "--verbose" in text
