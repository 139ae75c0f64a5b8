"""What the command modules share: the two consoles, the option types (and the check of --workers), warnings and
the progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cavlab.errors import UserError

out = Console()
err = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a scenario field: key.path=value (repeatable)."),
]
ModelArgument = Annotated[Path, typer.Argument(help="A model directory from `cavlab perception train`")]
MAX_WORKERS = 1024
WorkersOption = Annotated[int | None, typer.Option(help=f"Parallel processes, 1 to {MAX_WORKERS} (default: CPU count)")]
DurationOption = Annotated[float, typer.Option(help="Simulated time per run [s]")]
WarmupOption = Annotated[float, typer.Option(help="Warm-up per run [s]")]
RayOption = Annotated[
    str | None, typer.Option(help="Run on Ray: 'local' for a local instance, or a cluster address (host:port, auto)")
]


def check_workers(workers: int | None) -> int | None:
    """`workers` if it is None (the default) or in [1, MAX_WORKERS]; else a `UserError` saying the range."""
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise UserError(f"--workers must be between 1 and {MAX_WORKERS} (got {workers})")
    return workers


def warn(line: str) -> None:
    """One warning line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


class ProgressBar:
    """A progress bar on stderr, gone when done: the label in bold, the bar, "n/total <unit>", the time elapsed.

    `unit=None` leaves the count out; `columns` are more rich format strings shown after it, such as
    "{task.description}" or "{task.fields[vehicles]} vehicles" (`fields` gives their first values).
    Use it as a context manager; `advance` and `update` move the bar and set the fields.
    """

    def __init__(
        self,
        label: str,
        total: float,
        unit: str | None = None,
        *,
        completed: float = 0,
        columns: Sequence[str] = (),
        **fields: Any,
    ) -> None:
        texts = [*([f"{{task.completed}}/{{task.total}} {unit}"] if unit else []), *columns]
        self._bar = Progress(
            TextColumn(f"[bold]{escape(label)}"),
            BarColumn(),
            *(TextColumn(text) for text in texts),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._task = self._bar.add_task("", total=total, completed=completed, **fields)

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def advance(self, steps: float = 1, **fields: Any) -> None:
        """Move on by `steps` (and set `fields`, `description` included)."""
        self._bar.update(self._task, advance=steps, **fields)

    def update(self, completed: float, **fields: Any) -> None:
        """Set how far it is (and `fields`)."""
        self._bar.update(self._task, completed=completed, **fields)
