"""Run the `console` blocks of a Markdown page and write their output into it, or check it.

    python docs/console_blocks.py docs/quickstart.md            # check: differences, exit 1 if any
    python docs/console_blocks.py docs/quickstart.md --write    # regenerate the blocks

Every fenced block opened with ```console holds commands, `$ cavlab ...` (a trailing `\\` continues
one on the next line; `# ...` is a comment), each followed by its output. The commands of the whole
page run in order in one scratch folder, in this process, with both consoles 80 columns wide, so
later blocks see what earlier ones wrote (`runs/...`); `scenarios/` there is the clone's, as in the
clone's root. A ```yaml block preceded by
`<!-- file: NAME -->` is written to NAME in that folder first. An HTML comment right before a console
block shortens its output: `<!-- keep: REGEX -->` keeps the lines that match, `<!-- head: N -->` the
first N, `<!-- tail: N -->` the last N; a `...` line stands for what was left out.

What changes from run to run or machine to machine is made comparable before blocks are compared:
the wall-time row of a run's table, the UTC time in default run directory names, the column widths of
tables and the absolute path of the clone (shipped files are shown relative to it). A command exits
with code 0 exactly when its output has no `error:` line; anything else is reported too.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WIDTH = 80
FENCE = "```"


@dataclass
class Block:
    """A console block: where its lines are in the page, its commands and how its output is shortened."""

    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    commands: list[str]
    written: list[list[str]]  # per command, its lines as the page has them (continued with `\`)
    documented: list[list[str]]  # per command, the output lines as the page has them
    shorten: tuple[str, str] | None  # ("keep", regex) | ("head", n) | ("tail", n)


def parse(lines: list[str]) -> tuple[list[Block], dict[str, str]]:
    """The console blocks of a page and the files its `<!-- file: NAME -->` yaml blocks define."""
    blocks, files = [], {}
    k = 0
    while k < len(lines):
        line = lines[k]
        if not line.startswith(FENCE):
            k += 1
            continue
        kind = line[len(FENCE) :].strip()
        end = next(j for j in range(k + 1, len(lines)) if lines[j].startswith(FENCE))
        directive = _directive(lines[k - 1] if k else "")
        if kind == "yaml" and directive and directive[0] == "file":
            files[directive[1]] = "\n".join(lines[k + 1 : end]) + "\n"
        elif kind == "console":
            shorten = directive if directive and directive[0] in ("keep", "head", "tail") else None
            blocks.append(_block(lines, k + 1, end, shorten))
        k = end + 1
    return blocks, files


def _directive(line: str) -> tuple[str, str] | None:
    match = re.fullmatch(r"<!-- (file|keep|head|tail): (.+) -->", line.strip())
    return (match.group(1), match.group(2)) if match else None


def _block(lines: list[str], start: int, end: int, shorten: tuple[str, str] | None) -> Block:
    commands: list[str] = []
    written: list[list[str]] = []
    documented: list[list[str]] = []
    k = start
    while k < end:
        line = lines[k]
        if line.startswith("$ "):
            command, first = line[2:], k
            while command.endswith("\\") and k + 1 < end:
                k += 1
                command = command[:-1] + " " + lines[k].strip()
            commands.append(command)
            written.append(lines[first : k + 1])
            documented.append([])
        elif documented:
            documented[-1].append(line)
        else:
            raise ValueError(f"line {k + 1}: a console block starts with `$ command`")
        k += 1
    return Block(start, end, commands, written, documented, shorten)


def run_command(command: str) -> tuple[int, list[str]]:
    """Run one documented `cavlab ...` command in this process; its exit code and output lines."""
    from typer.testing import CliRunner

    from cavlab.cli import app
    from cavlab.cli.common import err, out

    args = shlex.split(command, comments=True)
    if not args or args[0] != "cavlab":
        raise ValueError(f"only cavlab commands are run: {command}")
    widths = out.width, err.width
    out.width = err.width = WIDTH
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)  # typer's help console reads it
    try:
        done = CliRunner().invoke(app, args[1:])
    finally:
        out.width, err.width = widths
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise RuntimeError(f"{command}: {done.exception!r}") from done.exception
    text = done.output.replace(str(REPO) + os.sep, "")
    return done.exit_code, [line.rstrip() for line in text.rstrip("\n").splitlines()]


def shorten(lines: list[str], how: tuple[str, str] | None) -> list[str]:
    """The output lines a block shows (see the module docstring)."""
    if how is None:
        return lines
    kind, arg = how
    if kind == "head":
        n = int(arg)
        return lines[:n] + (["..."] if len(lines) > n else [])
    if kind == "tail":
        n = int(arg)
        return (["..."] if len(lines) > n else []) + lines[-n:]
    pattern = re.compile(arg)
    out: list[str] = []
    for line in lines:
        if pattern.search(line):
            out.append(line)
        elif not out or out[-1] != "...":
            out.append("...")
    return out


def comparable(line: str) -> str:
    """A line with what varies between runs and machines taken out (see the module docstring)."""
    line = re.sub(r"(wall time\s*│).*?│", r"\1 … │", line)
    line = re.sub(r"\d{8}-\d{6}", "YYYYmmdd-HHMMSS", line)
    line = re.sub(r"([─━═])\1+", r"\1", line)
    return " ".join(line.split())


def process(page: Path, workdir: Path, write: bool) -> list[str]:
    """Run the page's blocks in `workdir`; the differences from the page (after writing them, if `write`)."""
    lines = page.read_text().splitlines()
    blocks, files = parse(lines)
    for name, text in files.items():
        (workdir / name).write_text(text)
    (workdir / "scenarios").symlink_to(REPO / "scenarios", target_is_directory=True)
    problems: list[str] = []
    replaced: list[tuple[Block, list[str]]] = []
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        for block in blocks:
            body: list[str] = []
            for command, written, documented in zip(block.commands, block.written, block.documented, strict=True):
                code, output = run_command(command)
                shown = shorten(output, block.shorten)
                if (code == 0) == any(line.startswith(("error:", "SUMO error:")) for line in output):
                    problems.append(f"{command}: exit code {code} with this output:\n" + "\n".join(output))
                if [comparable(x) for x in shown] != [comparable(x) for x in documented]:
                    problems.append(_diff(page, command, documented, shown))
                body += [*written, *shown]
            replaced.append((block, body))
    finally:
        os.chdir(cwd)
    if write:
        for block, body in reversed(replaced):
            lines[block.start : block.end] = body
        page.write_text("\n".join(lines) + "\n")
    return problems


def _diff(page: Path, command: str, documented: list[str], shown: list[str]) -> str:
    import difflib

    diff = difflib.unified_diff(documented, shown, f"{page.name} (documented)", "output now", lineterm="")
    return f"$ {command}\n" + "\n".join(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--write", action="store_true", help="regenerate the blocks (else: check them)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cavlab-docs-") as scratch:
        problems = process(args.page.resolve(), Path(scratch), args.write)
    for problem in problems:
        print(problem, end="\n\n")
    if problems and not args.write:
        sys.exit(1)


if __name__ == "__main__":
    main()
