"""A stage, declared once (engine/graph.py declares every stage): its parents, the recipe keys it reads, the content
it reads from outside the artifact root, its engine entry point, and the catalog tables it fills.

Everything else follows from the declaration: the fingerprint and the plan (engine/plan.py), the code
version (the import closure of the entry point), the build with its locks, publish and catalog record
(engine/build.py), and on the Dagster side the asset itself (assets/stage_asset.py). The entry point sees the
recipe only through a view of the declared keys, so a stage cannot read a key its fingerprint misses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydantic import BaseModel

from engine.errors import TunelineError
from engine.recipe import Recipe, get_dotted, is_threshold

if TYPE_CHECKING:
    from engine.store.content import ContentHasher
    from engine.store.home import Home


class UndeclaredKey(TunelineError):
    """A stage read a recipe key its declaration does not name: its fingerprint would miss it."""


@dataclass(frozen=True)
class Stage:
    """One stage of the graph, declared once.

    parents:  every stage whose artifact it may read (Dagster draws these edges).
    keys:     the recipe keys it reads ("sft" is the whole section but its check thresholds, "data.cutoff_len"
              one key); they are fingerprinted.
    locate:   keys it reads only to find outside content (data.dataset_dir, ...): not fingerprinted themselves,
              the content's identity is.
    outside:  (recipe view, hasher) -> the identity of the content it reads from outside (file digests).
    select:   recipe -> (parents, keys) it actually reads under that recipe, when that depends on the recipe
              (pt off reads no pt keys); default: all of them.
    entry:    the engine entry point, entry(run: StageRun) -> metrics; it writes the artifact into run.out.
    tables:   catalog row table -> the artifact's table that fills it (`rows`: its shards rows-00000.parquet, ...
              or one rows.parquet; engine/store/tables.py).
    training: a training stage: it runs in a process of its own (under torchrun or accelerate when the recipe
              asks), keeps its work directory when it fails, and resumes from its last complete checkpoint.
    trains:   recipe -> whether a training stage trains anything under it (pt off only names the base model): where
              not, its entry point runs in process, without a training process's start-up.
    off:      recipe -> why the stage is not configured under that recipe (None: it is). An off stage's artifact
              is a tiny "not configured" record made in process, without its entry point; its select should then
              read only the keys that turn it off.
    remote:   the kind of a non-training stage that may run as a pod (export, evaluation): it does where the
              launcher is kubernetes and launcher.kubernetes.also_in_pods names the kind (a training stage's kind is
              training: under kubernetes it always runs as a pod).
    writes:   what it writes to disk, estimated before it starts (engine/models/footprint.py TrainingWrites,
              ExportWrites; None: little beside weights); the space check (engine/store/space.py) compares it with
              the free space.
    """
    name: str
    entry: Callable[["StageRun"], dict]
    parents: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    locate: tuple[str, ...] = ()
    outside: Callable[[Any, "ContentHasher"], dict] | None = None
    select: Callable[[Recipe], tuple[tuple[str, ...], tuple[str, ...]]] | None = None
    tables: Mapping[str, str] = field(default_factory=dict)
    training: bool = False
    trains: Callable[[Recipe], bool] | None = None
    off: Callable[[Recipe], str | None] | None = None
    writes: Any = None
    remote: str | None = None

    @property
    def kind(self) -> str | None:
        """training, export or evaluation: what launcher.kubernetes says about where it runs (None: here, always)."""
        return "training" if self.training else self.remote

    def runs_out_of_process(self, recipe: Recipe) -> bool:
        """A training stage that trains, or a stage the recipe runs as a pod: through a spec, in a process of its
        own (engine/train/child.py)."""
        if self.training:
            return self.trains is None or self.trains(recipe)
        return self.remote is not None and recipe.launcher.runs_in_pod(self.remote)

    def reads(self, recipe: Recipe) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(parents, keys) this stage reads under `recipe`."""
        if self.select is None:
            return self.parents, self.keys
        parents, keys = self.select(recipe)
        unknown = [p for p in parents if p not in self.parents]
        if unknown:
            raise ValueError(f"stage {self.name}: select() names parents {unknown} it does not declare")
        return tuple(parents), tuple(keys)


@dataclass
class StageRun:
    """What an entry point gets: the recipe (declared keys only), its parents' artifact directories by stage
    name, the directory to write its artifact into, and where to say what it is doing."""
    stage: str
    fingerprint: str
    recipe: Any  # a RecipeView
    inputs: dict[str, Path]
    out: Path
    home: "Home"
    log: Callable[[str], None] = print

    @property
    def published(self) -> Path:
        """Where `out` will be once the artifact is published (a rename): what a path recorded in it must name."""
        return self.home.artifact_dir(self.stage, self.fingerprint)


class RecipeView:
    """The recipe as one stage may read it: its declared keys, and below a declared section every key but the
    check thresholds. Anything else raises UndeclaredKey naming the stage and the key."""

    def __init__(self, value: BaseModel, allowed: tuple[str, ...], stage: str, path: str = ""):
        self._value, self._allowed, self._stage, self._path = value, allowed, stage, path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        section = type(self._value)
        if name not in section.model_fields:
            return getattr(self._value, name)  # a method of the section, such as counts_tokens()
        key = f"{self._path}.{name}" if self._path else name
        value = getattr(self._value, name)
        covered = any(key == a or key.startswith(a + ".") for a in self._allowed)
        if covered and is_threshold(section, name) and key not in self._allowed:
            raise UndeclaredKey(f"stage {self._stage} read {key}, a check threshold: checks read thresholds, a "
                                "stage's build never does (its fingerprint leaves them out)")
        if covered:
            return RecipeView(value, self._allowed, self._stage, key) if isinstance(value, BaseModel) else value
        if any(a.startswith(key + ".") for a in self._allowed):
            return RecipeView(value, self._allowed, self._stage, key)
        raise UndeclaredKey(f"stage {self._stage} read recipe key {key!r}, which its declaration does not name "
                            f"(it reads {', '.join(self._allowed) or 'no keys'}): add it to the stage's keys")

    def __repr__(self) -> str:
        return f"RecipeView({self._path or 'recipe'} for {self._stage})"

    def declared_keys(self) -> tuple[str, ...]:
        """The keys this view lets its stage read (what a training process's spec carries)."""
        return self._allowed

    def whole_recipe(self) -> BaseModel:
        """The recipe behind the view, to hand to a training process with the declared keys (it reads it through
        a view of its own)."""
        return self._value


def not_configured(reason: str) -> dict:
    """The metrics of an off stage's artifact."""
    return {"configured": False, "reason": reason}


def is_configured(metrics: dict) -> bool:
    return metrics.get("configured", True) is not False


def view(recipe: Recipe, stage: Stage, keys: tuple[str, ...]) -> RecipeView:
    return RecipeView(recipe, tuple(keys) + stage.locate, stage.name)


def keyed_values(recipe: Recipe, keys: tuple[str, ...]) -> dict[str, Any]:
    """{key: value} of the keys a stage reads, as its fingerprint sees them (sections without thresholds)."""
    from engine.recipe import fingerprint_value
    return {key: fingerprint_value(get_dotted(recipe, key)) for key in sorted(keys)}
