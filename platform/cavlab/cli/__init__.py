"""The `cavlab` command line: one command per user intent. The commands live in one module per
group (`scenarios`, `experiments`, `rl`, `perception`, `hw`; what they share in `common`) and are
registered here, in the order `cavlab --help` lists them (`cavlab perception` as a sub-app), each
wrapped in the error handling: errors a user can fix print one line and exit with code 2; a SUMO
failure exits with 1; Ctrl-C (or SIGTERM) stops SUMO, removes the partial run and exits with 130.
Help texts are plain text (`rich_markup_mode=None`), so units such as `[s]` or `[veh/h]` show as
written instead of being read as rich markup.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.markup import escape

from cavlab.cli import experiments, hw, perception, rl, scenarios
from cavlab.cli.common import err
from cavlab.errors import SimulationError, UserError

app = typer.Typer(
    name="cavlab",
    help="Simulate and control connected automated vehicles on real SUMO traffic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except SimulationError as exc:
            err.print(f"[bold red]SUMO error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: SUMO stopped, partial results removed")
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


for _name, _command in (
    ("list", scenarios.list_scenarios),
    ("show", scenarios.show),
    ("validate", scenarios.validate),
    ("run", scenarios.run),
    ("plot", scenarios.plot),
    ("study", experiments.study),
    ("train", rl.train),
    ("evaluate", rl.evaluate),
    ("sweep", experiments.sweep),
    ("export", hw.export),
    ("profile", hw.profile),
):
    app.command(_name)(_handle_errors(_command))

perception_app = typer.Typer(
    help="Simulated sensors, perception datasets and models.", no_args_is_help=True, rich_markup_mode=None
)
for _name, _command in (
    ("dataset", perception.perception_dataset),
    ("train", perception.perception_train),
    ("study", perception.perception_study),
    ("eval", perception.perception_eval),
):
    perception_app.command(_name)(_handle_errors(_command))
app.add_typer(perception_app, name="perception")
del _name, _command


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
