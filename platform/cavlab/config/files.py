"""Reading the files a user gives: checked before they are parsed.

`read_text` refuses what is not a regular file (a directory, FIFO or device), a file over a
size limit and text that is not UTF-8. `load_yaml` is YAML's safe loader that refuses duplicate
keys, aliases that expand past `MAX_YAML_NODES` nodes ("billion laughs") or refer to themselves,
nesting deeper than `MAX_DEPTH` and values Python cannot hold (an integer of over 4300 digits, a
13th month); it reads numbers with an exponent but no dot (`1e-9`) as YAML 1.2 does, as floats.
`load_json` is strict JSON (no NaN/Infinity) with the same depth bound. Every failure is a
`UserError` whose one line names the file and what is allowed (`YAMLSyntaxError` for text that is
not YAML at all).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from cavlab.errors import UserError

MAX_TEXT_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 100_000
MAX_DEPTH = 64


def check_regular_file(path: str | Path, what: str, max_bytes: int | None = MAX_TEXT_BYTES) -> Path:
    """`path` if it is a regular file of at most `max_bytes`; else a `UserError` saying what it is."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{what} '{path}': no such file") from None
    except OSError as exc:
        raise UserError(f"{what} '{path}': cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} '{path}' is a directory; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} '{path}' is not a regular file (a FIFO, socket or device); give a file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UserError(f"{what} '{path}' is {_size(info.st_size)}; at most {_size(max_bytes)} is allowed")
    return path


def read_bytes(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (checked again while reading)."""
    path = check_regular_file(path, what, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{what} '{path}': cannot read it ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} '{path}' is over {_size(max_bytes)}; at most {_size(max_bytes)} is allowed")
    return data


def read_text(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {exc.start}); give a text file") from None


class YAMLSyntaxError(UserError):
    """Text that is not YAML (as opposed to YAML that breaks one of the bounds)."""


class _Refused(Exception):
    """A value the loader refuses; `load_yaml` turns it into a `UserError` naming the source."""


# int('9' * 5000), date(2020, 13, 1), and PyYAML's own slips on odd tagged scalars (`!!int ''`)
_CONSTRUCTION_ERRORS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, nesting past MAX_DEPTH while composing and
    values Python cannot construct, and reads `1e-9` as a float."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # bounded here, not by RecursionError: PyYAML's scanner looks ahead over every open bracket
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested too deeply (at most {MAX_DEPTH} levels are allowed)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTION_ERRORS as exc:
            raise _Refused(f"line {node.start_mark.line + 1}: {_value_problem(node, exc)}") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():  # else SafeLoader says so
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: SafeLoader says so itself below
                continue
            if duplicate:
                line = key_node.start_mark.line + 1
                raise _Refused(f"line {line}: duplicate key '{key}' (each key may appear once in a mapping)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot or sign (1e-9, 2.5e3)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _value_problem(node: yaml.Node, exc: Exception) -> str:
    kind = node.tag.rsplit(":", 1)[-1]
    if kind == "int" and "digits" in str(exc):
        return f"an integer of {len(node.value)} characters is too long (at most 4300 digits)"
    shown = repr(node.value) if isinstance(node.value, str) and len(node.value) <= 40 else "the value"
    reason = str(exc).split(";")[0]  # Python's own advice after ';' is left out
    return f"{shown} is not a valid {kind}" + (f" ({reason})" if reason else "")


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely: no duplicate keys, aliases bounded, nesting bounded."""
    loader = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise UserError(f"{source}: {exc}") from None
    except _CONSTRUCTION_ERRORS as exc:  # in a collection, outside construct_object
        raise UserError(f"{source}: a value YAML cannot construct ({str(exc).split(';')[0]})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise YAMLSyntaxError(f"{source}{where}: YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YAMLSyntaxError(
            f"{source}: character U+{code:04X} at offset {exc.position} is not allowed in YAML (a control character)"
        ) from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"{source}: YAML error: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_size(root: yaml.Node) -> None:
    """Refuse documents whose aliases expand past MAX_YAML_NODES, nest past MAX_DEPTH or refer to
    a node that contains them.

    Expanded size is counted once per distinct node (memoised), so the check is linear in the
    document even when its expansion is exponential."""
    expanded: dict[int, int] = {}
    depth_of: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    # iterative post-order walk over the node graph
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if not done:
            if key in expanded:
                continue
            if key in open_nodes:
                raise _Refused("an alias refers to a value that contains it; cycles are not allowed")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in expanded)
            continue
        open_nodes.discard(key)
        expanded[key] = 1 + sum(expanded[id(c)] for c in children)
        depth_of[key] = 1 + max((depth_of[id(c)] for c in children), default=0)
        if expanded[key] > MAX_YAML_NODES:
            raise _Refused(
                f"expands to over {MAX_YAML_NODES} values (aliases repeated too often); "
                f"write the values out or use fewer aliases"
            )
        if depth_of[key] > MAX_DEPTH:
            raise _Refused(f"nested too deeply (at most {MAX_DEPTH} levels are allowed)")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_json(text: str, source: str) -> Any:
    """Parse strict JSON (no NaN or Infinity), nesting at most MAX_DEPTH levels."""

    def refuse(constant: str) -> None:
        raise UserError(f"{source}: '{constant}' is not JSON (use null or a finite number)")

    try:
        value = json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise UserError(f"{source}: nested too deeply (at most {MAX_DEPTH} levels are allowed)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if _json_depth(value) > MAX_DEPTH:
        raise UserError(f"{source}: nested too deeply (at most {MAX_DEPTH} levels are allowed)")
    return value


def _json_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        nxt: list = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
        if depth > MAX_DEPTH:
            break
    return depth - 1 if depth else 0


def read_yaml(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """A user's YAML file, read and parsed with the checks above."""
    return load_yaml(read_text(path, what, max_bytes), str(path))


def read_json(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """A user's JSON file, read and parsed with the checks above."""
    return load_json(read_text(path, what, max_bytes), str(path))


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"
