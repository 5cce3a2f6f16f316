"""The errors tuneline raises for bad input: each names the file, key or row and what was expected."""


class TunelineError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the CLI."""


class RecipeError(TunelineError):
    """The recipe has an unknown key, a wrong type, or points at something that does not exist."""


class DataError(TunelineError):
    """A registered dataset cannot be read at all (a bad row goes to quarantine instead)."""


class CheckFailed(TunelineError):
    """A quality check that guards downstream work did not pass."""


class ServeError(TunelineError):
    """A model server could not start, did not become healthy, or the asked-for backend is unavailable."""
