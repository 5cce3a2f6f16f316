"""The import graph shows the architecture: no circles between modules or between the engine's packages, the engine
below the Dagster layer (never importing dagster, assets or pipelines), only the stage core and the recipe at the
engine's root, and no entry point whose code version (its import closure) covers the stage graph or the preflight.

Read from the source with the standard library (ast, through engine.store.codeversion.imported_names): imports
inside functions count, imports under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

from pathlib import Path

from engine.store.codeversion import imported_names, module_closure

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engine", "assets", "pipelines")
# the stage core, the stage graph, the recipe check, the errors: everything else in engine/ lives in a package
ENGINE_ROOT_MODULES = {"__init__.py", "stage.py", "plan.py", "build.py", "graph.py", "preflight.py", "errors.py"}


def project_modules() -> dict[str, Path]:
    """{dotted module name: file} of every module in engine/, assets/ and pipelines/."""
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the project modules it imports} (`from m import x` counts m.x where that is a module, else m)."""
    edges = {}
    for name, path in modules.items():
        named = imported_names(path.read_text(), name, path.name == "__init__.py")
        edges[name] = {n for n in named if n in modules and n != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one node, as a path a -> b -> ... -> a (Tarjan's
    algorithm, iterative: the graph has hundreds of nodes)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]

    def connect(start: str) -> None:
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(set(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return [circle_in(component, edges) for component in components]


def circle_in(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A path from the component's first node back to itself through the component (breadth first: a shortest)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, set()) & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return sorted(component)


def package_of(module: str) -> str:
    """engine.store.content -> engine.store; a root module of the engine (engine.plan) is its own node; assets and
    pipelines are one node each."""
    parts = module.split(".")
    if parts[0] != "engine":
        return parts[0]
    return ".".join(parts[:2])


def describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(circle) for circle in found)


def test_the_cycle_finder_finds_a_planted_circle():
    """The assertions below can fail: a circle planted in a graph is found and named, a chain is not."""
    planted = {"engine.a": {"engine.b"}, "engine.b": {"engine.c"}, "engine.c": {"engine.a"}, "engine.d": {"engine.a"}}
    assert cycles(planted) == [["engine.a", "engine.b", "engine.c", "engine.a"]]
    assert cycles({"engine.a": {"engine.b"}, "engine.b": set()}) == []


def test_no_module_imports_itself_back():
    edges = import_edges(project_modules())
    assert len(edges) > 80  # the walk saw engine/, assets/ and pipelines/
    found = cycles(edges)
    assert not found, f"import circles among modules: {describe(found)}"


def test_the_engine_packages_form_no_circle():
    edges: dict[str, set[str]] = {}
    for module, imported in import_edges(project_modules()).items():
        if module.startswith("engine"):
            edges.setdefault(package_of(module), set()).update(
                package_of(n) for n in imported if package_of(n) != package_of(module))
    assert {"engine.store", "engine.models", "engine.data", "engine.graph", "engine.preflight"} <= set(edges)
    found = cycles(edges)
    assert not found, f"import circles among the engine's packages: {describe(found)}"


def test_the_engine_imports_neither_dagster_nor_the_layers_above_it():
    modules = project_modules()
    offenders = []
    for name, path in modules.items():
        if name.split(".")[0] != "engine":
            continue
        for imported in imported_names(path.read_text(), name, path.name == "__init__.py"):
            top = imported.split(".")[0]
            if top.startswith("dagster") or top in ("assets", "pipelines"):
                offenders.append(f"{name} imports {imported}")
    assert not offenders, "the engine imports the Dagster layer: " + "; ".join(sorted(offenders))


def test_only_the_stage_core_and_the_recipe_live_at_the_engine_root():
    engine = ROOT / "engine"
    modules = {p.name for p in engine.glob("*.py")}
    assert not modules - ENGINE_ROOT_MODULES, (f"modules directly in engine/ that belong in a package: "
                                               f"{sorted(modules - ENGINE_ROOT_MODULES)}")
    folders = [p for p in engine.iterdir() if p.is_dir() and p.name != "__pycache__"]
    not_packages = [p.name for p in folders if not (p / "__init__.py").is_file()]
    assert not not_packages, f"folders in engine/ that are not packages: {not_packages}"
    assert (engine / "recipe" / "__init__.py").is_file()


def test_no_entry_point_covers_the_graph_or_the_preflight():
    """A stage's code version is its entry point's import closure: the declarations or the recipe check in it would
    rebuild every stage whenever either changed."""
    from engine.graph import STAGES
    leaks = {stage.name: sorted({"engine.graph", "engine.preflight"} & set(module_closure(stage.entry.__module__)))
             for stage in STAGES}
    assert not {name: found for name, found in leaks.items() if found}, (
        "entry points whose import closure holds the graph or the preflight: "
        + "; ".join(f"{name} ({', '.join(found)})" for name, found in leaks.items() if found))
    assert len(STAGES) == 23  # ppo_adapter, grpo_adapter and their evaluations


def redefined_names(source: str) -> list[str]:
    """Top-level functions and classes a module defines twice: the later one silently hides the earlier."""
    import ast
    seen, twice = set(), []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in seen:
                twice.append(f"{node.name} (line {node.lineno})")
            seen.add(node.name)
    return twice


def test_redefined_names_are_found():
    assert redefined_names("def f(a): pass\n\ndef f(b): pass\n") == ["f (line 3)"]


def test_no_module_defines_a_name_twice():
    found = {name: twice for name, path in project_modules().items() if (twice := redefined_names(path.read_text()))}
    assert not found, f"a later definition hides an earlier one: {found}"
