"""Scenario commands: list, show, validate, run and plot."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from cavlab.cli.common import ProgressBar, SetOption, out
from cavlab.config.files import read_text
from cavlab.config.scenario import resolve_scenario_path, shipped_scenarios
from cavlab.runs.rundir import SUMO_SUBDIR, default_run_dir, staged_run_dir, write_run
from cavlab.sim.engine import Engine
from cavlab.sim.network import build_network
from cavlab.sim.resolve import load_scenario

ScenarioArgument = Annotated[str, typer.Argument(help="Shipped scenario name or YAML file.")]


def list_scenarios() -> None:
    """List the shipped scenarios."""
    out.print("[bold]Shipped scenarios[/]", highlight=False)
    for name in sorted(shipped_scenarios()):
        s = load_scenario(name)
        demand = f"{sum(f.vehicles_per_hour for f in s.demand.flows) * s.demand.scale:g} veh/h"
        if s.road.network is not None and build_network(s.road).external.route_files:
            demand = f"{demand} and its route files" if s.demand.flows else "its route files' demand"
        facts = f"{_road_facts(s)}, {demand}, controller {s.control.controller}"
        out.print()
        out.print(_wrapped(f"{name}: {facts}", "", "    "), highlight=False, markup=False, soft_wrap=True)
        if s.description.strip():
            out.print(_wrapped(s.description, "  ", "  "), highlight=False, markup=False, soft_wrap=True)


def _road_facts(s: Any) -> str:
    """The road in a few words: kind, lanes and length, or the external network's file and size."""
    road = s.road
    if road.network is None:
        return f"{road.kind}, {road.lanes} lane{'s' if road.lanes > 1 else ''}, {road.length_m:g} m"
    network = build_network(road)
    edges = [e for e in network.edges if not e.internal]
    return (f"network {Path(road.network.file).name}, {len(edges)} edges, up to {max(e.lanes for e in edges)} "
            f"lanes, {sum(e.length_m for e in edges) / 1000:.1f} km")  # fmt: skip


def _wrapped(text: str, first: str, rest: str) -> str:
    """`text` wrapped at spaces to the terminal's width, its first line indented by `first`, the others by `rest`."""
    return textwrap.fill(" ".join(text.split()), width=max(out.width, 40), initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False)  # fmt: skip


def show(
    scenario: ScenarioArgument,
    resolved: Annotated[bool, typer.Option("--resolved", help="Show every field, defaults filled in.")] = False,
    overrides: SetOption = None,
) -> None:
    """Print a scenario (as written, or fully resolved)."""
    loaded = load_scenario(scenario, overrides or [])
    text = loaded.to_yaml() if resolved or overrides else read_text(resolve_scenario_path(scenario), "scenario file")
    if out.is_terminal:
        out.print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:  # piped into a file: the YAML exactly, never re-wrapped
        sys.stdout.write(text)


def validate(scenario: ScenarioArgument, overrides: SetOption = None) -> None:
    """Check a scenario file without running it."""
    s = load_scenario(scenario, overrides or [])
    flows = f"{len(s.demand.flows)} flow{'' if len(s.demand.flows) == 1 else 's'}"
    out.print(f"[green]ok[/]: {escape(s.name)} — {escape(_road_facts(s))}, {flows}, controller {s.control.controller}",
              highlight=False)  # fmt: skip


def run(
    scenario: ScenarioArgument,
    seed: Annotated[int | None, typer.Option(help="simulation.seed")] = None,
    duration: Annotated[float | None, typer.Option(help="simulation.duration_s [s]")] = None,
    backend: Annotated[str | None, typer.Option(help="simulation.backend: libsumo, traci or gui")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<scenario>/<time>-seed<seed>)")
    ] = None,
    overrides: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Run a scenario in SUMO and write a run directory."""
    sets = list(overrides or [])
    for key, value in (("seed", seed), ("duration_s", duration), ("backend", backend)):
        if value is not None:
            sets.append(f"simulation.{key}={value}")
    s = load_scenario(scenario, sets)
    final = out_dir or default_run_dir(s)
    with staged_run_dir(final) as staging:
        engine = Engine(s, staging / SUMO_SUBDIR)
        if quiet:
            result = engine.run()
        else:
            with _simulation_progress(s.simulation.duration_s) as update:
                result = engine.run(progress=update)
        write_run(staging, s, result)
    if not quiet:
        _summary_table(s.name, result.metrics, result.wall_time_s, result.steps)
    hint = f"  (plots: cavlab plot {final})" if s.outputs.trajectories else ""
    out.print(f"run directory: [bold]{escape(str(final))}[/]{escape(hint)}", highlight=False)


@contextmanager
def _simulation_progress(duration_s: float) -> Iterator[Callable[[Any, int], None]]:
    """A progress bar over simulated time, with vehicles and steps/s; gives the engine's progress callback."""
    columns = ("{task.fields[sim]}", "{task.fields[vehicles]} vehicles", "{task.fields[rate]} steps/s")
    with ProgressBar("simulating", duration_s, columns=columns, sim="", vehicles=0, rate="-") as bar:
        started = time.perf_counter()

        def update(world: Any, step: int) -> None:
            rate = step / max(time.perf_counter() - started, 1e-9)
            bar.update(
                world.time_s, sim=f"{world.time_s:7.1f}/{duration_s:g} s", vehicles=len(world), rate=f"{rate:,.0f}"
            )

        yield update


def _summary_table(name: str, metrics: dict, wall_s: float, steps: int) -> None:
    table = Table(title=f"{name}: metrics after warm-up")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("throughput", f"{metrics['throughput_vph']:.0f} veh/h"),
        *(
            (f"  lane {lane}", f"{vph:.0f} veh/h")
            for lane, vph in sorted(metrics["throughput_per_lane_vph"].items(), key=lambda kv: int(kv[0]))
        ),
        ("mean speed", f"{metrics['mean_speed_mps']:.2f} m/s"),
        ("trips completed", str(metrics["trips_completed"])),
        ("mean travel time", f"{metrics['mean_travel_time_s']:.1f} s"),
        ("mean delay vs free flow", f"{metrics['mean_delay_s']:.1f} s"),
        ("lane changes", f"{metrics['lane_changes']} ({metrics['lane_changes_cav']} by CAVs)"),
        ("collisions", str(metrics["collisions"])),
        ("hard-braking events", str(metrics["hard_braking_events"])),
        ("control energy per trip ∫½u²dt", f"{metrics['control_energy_per_trip_m2ps3']:.2f} m²/s³"),
        ("wall time", f"{wall_s:.1f} s ({steps / max(wall_s, 1e-9):,.0f} steps/s)"),
    ]
    if "perception_slot_accuracy" in metrics:
        rows[-1:-1] = [
            ("perception: slots right", f"{metrics['perception_slot_accuracy']:.3f}"),
            ("perceived-state error", f"{metrics['perception_plan_position_error_m']:.2f} m, "
                                      f"{metrics['perception_plan_speed_error_mps']:.2f} m/s"),
            ("perception delay", f"{metrics['perception_delay_s']:.2f} s"),
            ("perception energy", f"{metrics['perception_energy_j_per_cav_hour']:.3g} J per CAV-hour"),
            ("least gap of controlled CAVs", f"{metrics['min_gap_controlled_m']:.1f} m"),
        ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    out.print(table)


def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cavlab run`.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write the PNGs (default RUN_DIR)")] = None,
    route: Annotated[
        str | None,
        typer.Option(
            "--route",
            help="Also draw time_space_route.png along these consecutive SUMO edges (E1,E2,...), or 'auto': "
            "the run's most travelled route.",
        ),
    ] = None,
) -> None:
    """Draw a time-space diagram and a speed heatmap of a run.

    With --route, also a time-space diagram along a route of the run's network, through its junctions."""
    from cavlab.runs.plot import plot_run  # imports matplotlib (~0.4 s): kept out of the CLI's start-up time

    for path in plot_run(run_dir, out_dir, route=route):
        out.print(f"wrote {path}", highlight=False)
