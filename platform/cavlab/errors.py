"""The project's error types.

`UserError` is anything a user can cause and fix (a bad scenario, a missing file, a bad
argument): the CLI prints its message as one line and exits with code 2. `SimulationError`
is a failure of SUMO itself; it names the SUMO log to read.
"""


class CavlabError(Exception):
    """Base class of every error cavlab raises on purpose."""


class UserError(CavlabError):
    """Bad input from the user; the message names what is wrong and what is allowed."""


class ScenarioError(UserError):
    """A scenario file or override that does not validate."""


class SimulationError(CavlabError):
    """SUMO failed or was used in a way it does not support."""


def field_path(loc: tuple | list) -> str:
    """A validation location as a dotted path; odd keys (spaces, newlines, ...) are quoted."""
    return ".".join(
        p
        if isinstance(p, str) and p.replace("_", "").replace("-", "").isalnum()
        else (str(p) if isinstance(p, int) else repr(p))
        for p in loc
    )
