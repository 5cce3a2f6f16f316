"""A stage's code version: the hash of every project module its entry point can run.

The closure is read from the source (import statements, including imports inside functions), restricted
to the project's own packages; imports under `if TYPE_CHECKING:` are left out, since they never run.
Editing any module in the closure changes the version, so the stage and everything downstream rebuild.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Callable

PROJECT_PACKAGES = ("engine",)  # the work lives here; assets/ and pipelines/ only declare and orchestrate
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def module_file(name: str) -> Path | None:
    """The source file of a project module, or None when `name` is not one (a class or function name).
    Found on disk, not imported: looking a module up must not run it."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def read_source(path: Path) -> str:
    return path.read_text()


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in `source` may load (a `from m import x` yields m and m.x)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)
    visit(ast.parse(source))
    return names


def with_parents(name: str) -> list[str]:
    """A module and the packages it lives in: importing engine.data.ingest runs engine/data/__init__.py too."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@lru_cache(maxsize=None)
def module_imports(name: str, path: Path) -> frozenset[str]:
    """imported_names of one project module, parsed once per process (every stage's closure shares most)."""
    return frozenset(imported_names(read_source(path), name, path.name == "__init__.py"))


@lru_cache(maxsize=None)
def module_closure(root: str) -> tuple[str, ...]:
    """The project modules `root` can import, itself included, sorted."""
    seen: set[str] = set()
    pending = with_parents(root)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            continue
        seen.add(name)
        for imported in module_imports(name, path):
            pending += [n for n in with_parents(imported) if n not in seen]
    return tuple(sorted(seen))


def code_version(entry: Callable) -> str:
    """sha256 (12 hex digits) over the names and sources of the entry point's module closure."""
    digest = hashlib.sha256()
    for name in module_closure(entry.__module__):
        digest.update(name.encode() + b"\0" + read_source(module_file(name)).encode() + b"\0")
    return digest.hexdigest()[:12]
