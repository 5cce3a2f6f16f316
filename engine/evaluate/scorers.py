"""Answer scorers for task accuracy: the built-in exact match, or a user's own named in the recipe.

A scorer is a function (prediction: str, reference: str) -> float in [0, 1] (a bool counts as 0 or 1).
The recipe names one as `exact_match` or as `package.module:function`, importable from the working directory.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from pathlib import Path
from typing import Callable

from engine.errors import RecipeError

Scorer = Callable[[str, str], float]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answers are equal once surrounding and repeated whitespace is ignored."""
    return float(" ".join(prediction.split()) == " ".join(reference.split()))


def char_similarity(prediction: str, reference: str) -> float:
    """Partial credit: difflib's ratio of matching characters (1.0 equal, 0.0 nothing in common)."""
    return difflib.SequenceMatcher(None, " ".join(prediction.split()), " ".join(reference.split())).ratio()


BUILT_IN: dict[str, Scorer] = {"exact_match": exact_match, "char_similarity": char_similarity}


def resolve_scorer(name: str) -> Scorer:
    """The scorer a recipe names, or RecipeError saying what was expected."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise RecipeError(f"evaluation.scorer {name!r}: expected one of {sorted(BUILT_IN)} or 'module:function'")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"evaluation.scorer {name!r}: cannot import module {module_name!r} ({exc})") from None
    scorer = getattr(module, attribute, None)
    if not callable(scorer):
        raise RecipeError(f"evaluation.scorer {name!r}: module {module_name!r} has no function {attribute!r}")
    return scorer


def scores(scorer: Scorer, predictions: list[str], references: list[str]) -> list[float]:
    """Each prediction's score; a scorer returning something outside [0, 1] is a bug in the scorer, reported as
    such."""
    values = []
    for prediction, reference in zip(predictions, references, strict=True):
        value = float(scorer(prediction, reference))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned {value} for reference "
                             f"{reference!r}; expected a number in [0, 1]")
        values.append(value)
    return values


def score(scorer: Scorer, predictions: list[str], references: list[str]) -> float:
    """Mean score (0 for no predictions); see `scores`."""
    values = scores(scorer, predictions, references)
    return sum(values) / max(len(values), 1)


def scorer_identity(name: str) -> str:
    """What fingerprints a scorer: its name, and for a user's own the hash of its module's source."""
    if name in BUILT_IN:
        return name
    import hashlib
    import inspect
    source = inspect.getsource(inspect.getmodule(resolve_scorer(name)))
    return f"{name}@{hashlib.sha256(source.encode()).hexdigest()[:12]}"
