"""The project's error types.

`UserError` is anything a user can cause and fix (a bad scenario, a missing file, a bad
argument): the CLI prints its message as one line and exits with code 2. `SimulationError`
is a failure of SUMO itself; it names the SUMO log to read. `validation_message` makes such a
line of a pydantic `ValidationError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


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


def validation_message(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    unknown: str = "unknown field '{field}' (allowed: {allowed})",
    unknown_none_allowed: str | None = None,
    missing: str | None = None,
    invalid: str = "{field}: {msg}",
    invalid_at_root: str | None = None,
    allowed: Callable[[tuple], Iterable[str]] | None = None,
    strip_value_error: bool = True,
    show_input: bool = False,
    count_more: bool = False,
    values: Mapping[str, object] | None = None,
) -> str:
    """One line for the first error of `exc`, raised validating `model`.

    The templates are `str.format` strings with `{field}` (the error's location, `field_path`),
    `{allowed}` and `{msg}`, and the keys of `values`:

    - an unknown field: `unknown`, `{allowed}` the field names of the block at that location
      (`block_fields`, or `allowed(location of the block)`), comma-separated; with no names,
      `unknown_none_allowed` if given;
    - a missing field: `missing` if given, else as any other error;
    - any other error: `invalid` (`invalid_at_root` if given and the location is empty), `{msg}`
      pydantic's message without its "Value error, " prefix (kept if not `strip_value_error`);
      `show_input` appends " (got <input>)" unless the error is a raised ValueError or the input a
      mapping.

    `count_more` appends " (and N more errors)" when there are others.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    names = {**(values or {}), "field": field_path(first["loc"])}
    if kind == "extra_forbidden":
        block = tuple(first["loc"][:-1])
        listed = list(allowed(block) if allowed is not None else block_fields(model, block))
        template = unknown if listed or unknown_none_allowed is None else unknown_none_allowed
        line = template.format(**names, allowed=", ".join(listed))
    elif kind == "missing" and missing is not None:
        line = missing.format(**names)
    else:
        msg = first["msg"].removeprefix("Value error, ") if strip_value_error else first["msg"]
        template = invalid_at_root if invalid_at_root is not None and not names["field"] else invalid
        line = template.format(**names, msg=msg)
        if show_input and "input" in first and kind != "value_error" and not isinstance(first["input"], dict):
            line += f" (got {first['input']!r})"
    more = len(errors) - 1
    if count_more and more:
        line += f" (and {more} more error{'s' if more > 1 else ''})"
    return line


def block_fields(model: type[BaseModel], loc: tuple | list) -> list[str]:
    """The sorted field names of the block at `loc` inside `model` (a path of field names and list/dict
    keys): each field name steps into the model inside its annotation (`X | None`, `list[X]`,
    `dict[str, X]`); a list index or dict key keeps the current block. No names if the path leaves the
    models."""
    block: Any = model
    for part in map(str, loc):
        fields = getattr(block, "model_fields", None)
        if fields is None or part not in fields:
            continue
        block = _model_in(fields[part].annotation)
        if block is None:
            return []
    return sorted(getattr(block, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like `X | None`, `list[X]` or `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
