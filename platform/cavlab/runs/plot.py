"""Plots of a run directory: a time-space diagram per lane, a speed heatmap, and (`route`) a time-space
diagram along a route of consecutive edges, its distances taken from the run's network."""

from __future__ import annotations

import collections
import itertools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from cavlab.config.files import check_regular_file, read_json
from cavlab.errors import UserError
from cavlab.runs.rundir import os_error_text, parquet_error_text
from cavlab.sim.network import Network, build_network
from cavlab.sim.resolve import load_scenario

ACCEPTS = "cavlab plot takes a run directory written by `cavlab run` (summary.json, trajectories.parquet)"
TRAJECTORY_MAX_BYTES = 4 * 1024**3


def _load(run_dir: Path, ids: tuple[str, ...] = ()) -> tuple[dict, dict[str, np.ndarray], dict[str, list[str]]]:
    """A run directory's summary and trajectories (the numeric columns, and the string columns `ids` as codes
    into the names returned for each); a `UserError` saying what `run_dir` is if it is not one."""
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory; {ACCEPTS}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory; {ACCEPTS}")
    if (run_dir / "sweep.json").exists():
        raise UserError(
            f"{run_dir}: is a sweep directory (its plots, one PNG per metric, are drawn by `cavlab sweep`); {ACCEPTS}"
        )
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        raise UserError(f"{run_dir}: not a finished run directory (no summary.json); {ACCEPTS}")
    try:
        summary = read_json(summary_file, "run summary")
    except UserError as exc:
        raise UserError(f"{exc}; {ACCEPTS}") from None
    missing = [k for k in ("scenario", "seed", "controller") if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise UserError(f"{summary_file}: not the summary of a run (no '{missing[0]}'); {ACCEPTS}")
    traj_file = run_dir / "trajectories.parquet"
    if not traj_file.exists():
        raise UserError(f"{run_dir}: no trajectories.parquet (the run had outputs.trajectories: false)")
    check_regular_file(traj_file, "trajectories", TRAJECTORY_MAX_BYTES)
    numeric = ["t_s", "lane", "x_m", "speed_mps"]
    try:
        if "edge" in ids and "edge" not in pq.read_schema(traj_file).names:
            raise UserError(
                f"{traj_file}: has no edge column (written by a cavlab without it); --route needs a run recorded "
                f"by this version: run it again with `cavlab run`"
            )
        table = pq.read_table(traj_file, columns=[*numeric, *ids])
    except (OSError, ValueError) as exc:
        raise UserError(f"{traj_file}: cannot read the trajectories ({parquet_error_text(exc)})") from None
    for name in numeric:
        if not (pa.types.is_integer(table[name].type) or pa.types.is_floating(table[name].type)):
            raise UserError(f"{traj_file}: column {name} holds {table[name].type}, not numbers; {ACCEPTS}")
    for name in ids:
        if not pa.types.is_string(table[name].type) or table[name].null_count:
            raise UserError(f"{traj_file}: column {name} holds {table[name].type} or nulls, not strings; {ACCEPTS}")
    if table.num_rows == 0:
        raise UserError(f"{run_dir}: the run has no vehicle data to plot (no vehicle entered the network)")
    data = {name: table[name].to_numpy() for name in numeric}
    names = {}
    for name in ids:
        encoded = table[name].combine_chunks().dictionary_encode()
        data[name], names[name] = encoded.indices.to_numpy(), encoded.dictionary.to_pylist()
    return summary, data, names


def plot_run(
    run_dir: Path, out_dir: Path | None = None, max_points: int = 400_000, route: str | None = None
) -> list[Path]:
    """Write time_space.png and speed_heatmap.png, and with `route` (comma-separated consecutive edge ids,
    or `auto`: the run's most travelled route) time_space_route.png; returns their paths. Everything is
    checked before the first PNG is written."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    summary, data, names = _load(run_dir, ("edge", "vehicle_id") if route is not None else ())
    title = f"{summary['scenario']} · seed {summary['seed']} · {summary['controller']}"
    along = None
    if route is not None:
        network = _run_network(run_dir)
        edges = _route(route, network, data, names)
        along = (edges, route_distance(network, edges, data["x_m"], data["edge"], names["edge"]))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [_time_space(data, title, out_dir, max_points), _heatmap(data, title, out_dir)]
        if along is not None:
            written.append(_time_space_route(data, network, *along, title, out_dir, max_points))
        return written
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write plots there ({os_error_text(exc)})") from None


# ----------------------------------------------------------------------------- routes


def _run_network(run_dir: Path) -> Network:
    """The run's network, rebuilt from its scenario.yaml (a generated road comes from the cache)."""
    path = run_dir / "scenario.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no scenario.yaml; --route rebuilds the run's network from it")
    try:
        return build_network(load_scenario(path).road)
    except UserError as exc:
        raise UserError(f"--route: cannot rebuild the run's network: {exc}") from None


def successors(network: Network) -> dict[str, frozenset[str]]:
    """Per normal edge, the normal edges a vehicle drives on to: an external network's graph, or the edges
    that follow each other in a generated road's routes."""
    if network.external is not None:
        return network.external.successors
    follow: dict[str, set[str]] = collections.defaultdict(set)
    for edges in network.routes.values():
        for a, b in itertools.pairwise(edges):
            follow[a].add(b)
    return {e.id: frozenset(follow[e.id]) for e in network.edges}


def _listed(names: list[str] | set[str] | frozenset[str], most: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (f", … ({len(names)} in all)" if len(names) > most else "")


def _route(value: str, network: Network, data: dict[str, np.ndarray], names: dict[str, list[str]]) -> tuple[str, ...]:
    """The edges of `--route`: checked to be known normal edges, each followed by the next; `auto`: the
    most travelled route of the run."""
    follow = successors(network)
    if value.strip() == "auto":
        return most_travelled_route(network, data["vehicle_id"], data["t_s"], data["edge"], names["edge"])
    edges = tuple(name.strip() for name in value.split(","))
    if not any(edges):
        raise UserError("--route: empty list; give consecutive edge ids E1,E2,… or 'auto'")
    internal = {e.id for e in network.edges if e.internal}
    for name in edges:
        if name in internal:
            raise UserError(
                f"--route: '{name}' is a junction's internal edge; name the normal edges (the internal ones "
                f"between them are included)"
            )
        if name not in follow:
            raise UserError(
                f"--route: unknown edge '{name or '<empty>'}' in the run's network (edges: {_listed(follow)})"
            )
    if len(set(edges)) < len(edges):
        raise UserError(f"--route: an edge appears twice in {','.join(edges)}; a route passes each edge once")
    for a, b in itertools.pairwise(edges):
        if b not in follow[a]:
            after = f"after '{a}' come {_listed(follow[a])}" if follow[a] else f"'{a}' is an exit"
            raise UserError(f"--route: edge '{b}' does not follow '{a}' (the edges must be consecutive; {after})")
    return edges


def most_travelled_route(
    network: Network, vehicle: np.ndarray, t_s: np.ndarray, edge: np.ndarray, edge_names: list[str]
) -> tuple[str, ...]:
    """The most frequent sequence of normal edges the vehicles drove (codes `edge` into `edge_names`) whose
    edges are consecutive (a sampling period may skip a short edge): of the vehicles that left before the
    last sample if there are any (the others' sequences are cut short); ties go to the longer, then the
    first in sort order."""
    follow = successors(network)
    normal = np.array([name in follow for name in edge_names], dtype=bool)
    last = np.full(int(vehicle.max()) + 1 if len(vehicle) else 0, -np.inf)
    np.maximum.at(last, vehicle, t_s)
    left = last < t_s.max() if len(t_s) else last > 0
    if not left.any():
        left[:] = True
    rows = np.lexsort((t_s, vehicle))
    rows = rows[normal[edge[rows]] & left[vehicle[rows]]] if len(edge_names) else rows[:0]
    v, e = vehicle[rows], edge[rows]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (v[1:] != v[:-1]) | (e[1:] != e[:-1])  # the first row of each edge a vehicle enters
    v, e = v[new], e[new]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if len(v) else np.zeros(0, dtype=np.intp)
    counts = collections.Counter(tuple(edge_names[k] for k in part) for part in np.split(e, starts[1:]) if len(part))
    valid = [
        (-n, -len(seq), seq)
        for seq, n in counts.items()
        if len(set(seq)) == len(seq) and all(b in follow[a] for a, b in itertools.pairwise(seq))
    ]
    if not valid:
        raise UserError("--route auto: no vehicle of the run drove a route of consecutive edges; name one with --route")
    return min(valid)[2]


def _between(network: Network, follows: set[tuple[str, str]], a: str, b: str) -> dict[str, float]:
    """The internal edges a vehicle passes from normal edge `a` to `b` (`follows`: the edge pairs a vehicle
    drives from one to the other), each with its distance from `a`'s end (internal edges one after another
    in a junction are laid end to end)."""
    internal = {e.id for e in network.edges if e.internal}
    normal = {e.id for e in network.edges if not e.internal} - {a, b}

    def via_other(i: str) -> bool:  # continuations also join lanes reached within one step past short edges
        return any(((a, n) in follows and (n, i) in follows) or ((i, n) in follows and (n, b) in follows)
                   for n in normal)  # fmt: skip

    inside = {i for i in internal if (a, i) in follows and (i, b) in follows and not via_other(i)}
    start = dict.fromkeys(inside, 0.0)
    for _ in inside:  # longest path through the junction's internal edges
        for i, j in itertools.product(inside, inside):
            if (i, j) in follows and i != j:
                start[j] = max(start[j], start[i] + network.edge(i).length_m)
    return start


def route_offsets(network: Network, route: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """Per edge of `route` (and internal edge between two of them) the route distance of its start, and the
    route's length: the earlier edges' lengths, junctions included."""
    names, external = network.edge_names, network.external
    follows = {(names[i], names[j]) for i, _, j, _ in external.continuations} if external is not None else set()
    offsets: dict[str, float] = {}
    at = 0.0
    for k, name in enumerate(route):
        offsets[name] = at
        at += network.edge(name).length_m
        if k + 1 < len(route) and follows:
            inside = _between(network, follows, name, route[k + 1])
            offsets |= {i: at + s for i, s in inside.items()}
            at += max((s + network.edge(i).length_m for i, s in inside.items()), default=0.0)
    return offsets, at


def route_distance(
    network: Network, route: tuple[str, ...], x_m: np.ndarray, edge: np.ndarray, edge_names: list[str]
) -> np.ndarray:
    """Per row, the distance along `route` [m] (NaN off the route): the start of its edge on the route plus
    its position on the edge, x_m − edge.start_m."""
    offsets, _ = route_offsets(network, route)
    shift = np.array([offsets[name] - network.edge(name).start_m if name in offsets else np.nan for name in edge_names])
    return x_m + shift[edge] if len(edge_names) else np.full(len(x_m), np.nan)


def save_png(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """`fig` as the PNG `path`, atomically: a failed write leaves no half a picture."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _time_space(data: dict[str, np.ndarray], title: str, out_dir: Path, max_points: int) -> Path:
    lanes = sorted(set(data["lane"].tolist()), reverse=True)
    fig = Figure(figsize=(11, 2.6 * len(lanes)))  # no pyplot: no global state, the backend stays the user's
    axes = fig.subplots(len(lanes), 1, sharex=True, squeeze=False)
    vmax = float(np.percentile(data["speed_mps"], 99.5)) if len(data["speed_mps"]) else 1.0
    for ax, lane in zip(axes[:, 0], lanes, strict=True):
        rows = np.flatnonzero(data["lane"] == lane)
        if len(rows) > max_points:  # thin evenly so the picture stays readable and quick
            rows = rows[:: len(rows) // max_points + 1]
        points = ax.scatter(
            data["t_s"][rows], data["x_m"][rows], c=data["speed_mps"][rows],
            s=0.3, cmap="RdYlGn", vmin=0, vmax=vmax, linewidths=0, rasterized=True,
        )  # fmt: skip
        name = "ramp / acceleration lane" if lane < 0 else f"lane {lane}"
        ax.set_ylabel(f"{name}\nx [m]")
    axes[-1, 0].set_xlabel("time [s]")
    fig.colorbar(points, ax=axes[:, 0], label="speed [m/s]")
    fig.suptitle(f"Time-space diagram — {title}")
    return save_png(fig, out_dir / "time_space.png")


def _time_space_route(
    data: dict[str, np.ndarray], network: Network, route: tuple[str, ...], distance: np.ndarray, title: str,
    out_dir: Path, max_points: int,
) -> Path:  # fmt: skip
    offsets, length = route_offsets(network, route)
    rows = np.flatnonzero(np.isfinite(distance))
    if len(rows) > max_points:
        rows = rows[:: len(rows) // max_points + 1]
    fig = Figure(figsize=(11, 6))
    ax = fig.subplots()
    speed = data["speed_mps"][rows]
    vmax = float(np.percentile(speed, 99.5)) if len(rows) else 1.0
    points = ax.scatter(
        data["t_s"][rows], distance[rows], c=speed,
        s=0.3, cmap="RdYlGn", vmin=0, vmax=vmax, linewidths=0, rasterized=True,
    )  # fmt: skip
    for name in route:  # where each edge of the route starts
        ax.axhline(offsets[name], color="0.75", linewidth=0.5)
        ax.annotate(name, (0, offsets[name]), xycoords=("axes fraction", "data"), fontsize=7, color="0.4",
                    xytext=(2, 2), textcoords="offset points")  # fmt: skip
    ax.set_ylim(0, length)
    ax.set_xlabel("time [s]")
    ax.set_ylabel("distance along the route [m]")
    fig.colorbar(points, ax=ax, label="speed [m/s]")
    shown = " → ".join(route) if len(route) <= 6 else f"{route[0]} → … → {route[-1]} ({len(route)} edges)"
    ax.set_title(f"Time-space diagram along {shown}, all lanes — {title}", fontsize=9)
    return save_png(fig, out_dir / "time_space_route.png")


def _heatmap(
    data: dict[str, np.ndarray], title: str, out_dir: Path, cell_s: float = 10.0, cell_m: float = 50.0
) -> Path:
    t, x, v = data["t_s"], data["x_m"], data["speed_mps"]
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    if len(t):
        t_edges = np.arange(0, t.max() + cell_s, cell_s)
        x_edges = np.arange(min(0.0, x.min()), x.max() + cell_m, cell_m)
        total, _, _ = np.histogram2d(t, x, bins=[t_edges, x_edges], weights=v)
        count, _, _ = np.histogram2d(t, x, bins=[t_edges, x_edges])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        vmax = float(np.percentile(v, 99.5))
        mesh = ax.pcolormesh(t_edges, x_edges, mean.T, cmap="RdYlGn", shading="flat", vmin=0, vmax=vmax)
        fig.colorbar(mesh, ax=ax, label="mean speed [m/s]")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("x [m]")
    ax.set_title(f"Speed heatmap ({cell_s:g} s × {cell_m:g} m cells, all lanes) — {title}")
    fig.tight_layout()
    return save_png(fig, out_dir / "speed_heatmap.png")
