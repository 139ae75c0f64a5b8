"""The lane-change study: controllers compared over demand, CAV share and seeds.

Each point (controller variant × fast-lane demand q × CAV share × seed) is one run of
`highway-lane-change` with q veh/h on the fast lane and 0.6·q on the slow lane (three
quarters of it slow human-driven vehicles): a sweep (`study_sweep`, run by cavlab.experiments.sweep in
fresh processes, resumable). Variants:

- `cooperative`: the cooperative controller (cavlab.controllers.cooperative);
- `selfish`: C takes the nearest gap as fast as it can, nobody cooperates;
- `sumo-default`: SUMO's LC2013 drives everyone, with its default cooperation (lcCooperative 1);
- `no-cooperation`: LC2013 with lcCooperative = 0 for every vehicle type (nobody makes room).

Besides the run metrics, every run measures its lane changes the same way whatever drives
them, from the trajectories: for each CAV that moves from lane 0 to lane 1 after being stuck
(a slower leader within 60 m, the fast lane at least 2 m/s faster), the *maneuver time* from
the start of that stuck period to the lane change, and the *fast-lane disruption* of its new
front and rear neighbours over that time, D = Σ γ_x(x(t_c) − x(t_s) − v(t_s)·Δt)² +
γ_v(v(t_c) − v(t_s))² (the controller's own metric, cavlab.controllers.cooperative).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from cavlab.controllers.cooperative import CooperativeParams, disruption_parts
from cavlab.experiments.sweep import SweepSpec, register_measure
from cavlab.runs.stats import mean_ci
from cavlab.sim.resolve import load_scenario

SCENARIO = "highway-lane-change"
VARIANTS = ("cooperative", "selfish", "sumo-default", "no-cooperation")
STUCK_GAP_M = 60.0
STUCK_SPEED_GAIN_MPS = 2.0


def study_sweep(variants: list[str], demands_vph: list[float], cav_shares: list[float], seeds: int,
                duration_s: float = 600.0, warmup_s: float = 120.0) -> SweepSpec:  # fmt: skip
    """The study as a sweep: named axes `variant` and `demand_vph` (q on the fast lane, 0.45·q and
    0.15·q on the slow lane's two flows), the CAV share, the seeds, and the lane-change measures.
    The shipped sweep `lane-change-study` is this with the defaults of `cavlab study`."""
    types = load_scenario(SCENARIO).demand.vehicle_types
    overrides = {
        "cooperative": ["control.controller=cooperative"],
        "selfish": ["control.controller=selfish"],
        "sumo-default": ["control.controller=sumo"],
        "no-cooperation": ["control.controller=sumo", *(f"demand.vehicle_types.{name}.lane_change.cooperative=0"
                                                        for name in types)],
    }  # fmt: skip
    demand = {q: [f"demand.flows.0.vehicles_per_hour={0.45 * q}", f"demand.flows.1.vehicles_per_hour={0.15 * q}",
                  f"demand.flows.2.vehicles_per_hour={q}"] for q in demands_vph}  # fmt: skip
    return SweepSpec(
        scenario=SCENARIO, set=[f"simulation.duration_s={duration_s}", f"simulation.warmup_s={warmup_s}"],
        grid={"variant": {v: overrides[v] for v in variants}, "demand_vph": demand, "demand.cav_share": cav_shares},
        seeds=seeds, measures=["lane_changes"], metrics=[*METRICS, "collisions", "hard_braking_events"],
    )  # fmt: skip


def lane_change_measures(
    trajectories: pa.Table, warmup_s: float, lengths: dict[str, float], params
) -> list[tuple[float, float]]:
    """(maneuver time, fast-lane disruption) of every stuck CAV's move from lane 0 to lane 1, CAV by CAV
    (in the order they first appear), each CAV's moves in time order."""
    def numbers(name: str, dtype: type) -> np.ndarray:
        return np.asarray(trajectories.column(name).to_numpy(), dtype=dtype)

    time_s, lane = numbers("t_s", np.float64), numbers("lane", np.int64)
    x, v = numbers("x_m", np.float64), numbers("speed_mps", np.float64)
    ids, _ = _codes(trajectories.column("vehicle_id"))  # vehicle ids as integer codes
    types, type_names = _codes(trajectories.column("vehicle_type"))
    is_cav = np.array([name == "cav" for name in type_names], dtype=bool)[types]
    length = np.array([lengths[name] for name in type_names], dtype=np.float64)[types]
    order = np.lexsort((x, lane, time_s))  # by time, lane, position
    time_s, lane, x, v, ids, is_cav, length = (a[order] for a in (time_s, lane, x, v, ids, is_cav, length))
    same_group = (time_s[1:] == time_s[:-1]) & (lane[1:] == lane[:-1])
    leader_gap = np.full(len(x), np.inf)
    leader_speed = np.full(len(x), np.inf)
    leader_gap[:-1][same_group] = (x[1:] - length[1:] - x[:-1])[same_group]  # bumper to bumper
    leader_speed[:-1][same_group] = v[1:][same_group]
    steps, step_index = np.unique(time_s, return_inverse=True)
    fast = lane == 1
    sums = np.bincount(step_index[fast], weights=v[fast], minlength=len(steps))
    counts = np.bincount(step_index[fast], minlength=len(steps))
    fast_mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    stuck = (lane == 0) & (leader_gap <= STUCK_GAP_M)
    stuck &= leader_speed <= fast_mean[step_index] - STUCK_SPEED_GAIN_MPS
    # every CAV's rows in time order, the CAVs in the order they first appear
    cav_rows = np.flatnonzero(is_cav)
    first_row = np.full(int(ids.max(initial=-1)) + 1, len(x))
    np.minimum.at(first_row, ids[cav_rows], cav_rows)
    seq = cav_rows[np.argsort(first_row[ids[cav_rows]], kind="stable")]
    same_vehicle = ids[seq][1:] == ids[seq][:-1]
    # where each CAV's stuck period began: the latest row of the same CAV, stuck, after one that is not
    stuck_seq = stuck[seq]
    begins = stuck_seq & ~np.concatenate(([False], same_vehicle & stuck_seq[:-1]))
    began = np.maximum.accumulate(np.where(begins, np.arange(len(seq)), 0))
    a, b = seq[:-1], seq[1:]
    moves = np.flatnonzero(same_vehicle & (lane[a] == 0) & (lane[b] == 1) & (time_s[b] > warmup_s) & stuck[a])
    # a (time step, lane) group is a contiguous run of rows: found by bisection on a sorted key
    lane_span = int(lane.max(initial=0)) - int(lane.min(initial=0)) + 1
    group_key = step_index * lane_span + (lane - lane.min(initial=0))
    # (vehicle, time step) -> its row on lane 1 (the last one, were there several)
    on_fast = np.flatnonzero(fast)[::-1]
    state_keys, last = np.unique(ids[on_fast] * len(steps) + step_index[on_fast], return_index=True)
    state_rows = on_fast[last]

    def state(vehicle: int, step: int) -> int | None:
        key = vehicle * len(steps) + step
        i = int(np.searchsorted(state_keys, key))
        return int(state_rows[i]) if i < len(state_keys) and state_keys[i] == key else None

    out = []
    for i in moves:
        start, change = seq[began[i]], seq[i + 1]
        t_s, t_c = time_s[start], time_s[change]
        key = group_key[change]  # (t_c, lane 1): the fast lane at the change
        lo, hi = np.searchsorted(group_key, key, "left"), np.searchsorted(group_key, key, "right")
        position = int(np.searchsorted(x[lo:hi], x[change]))
        neighbours = [ids[lo + j] for j in (position - 1, position + 1) if 0 <= j < hi - lo]
        d = 0.0
        for n in neighbours:
            r0, r1 = state(n, step_index[start]), state(n, step_index[change])
            if r0 is not None and r1 is not None:
                d += sum(disruption_parts(x[r0], v[r0], x[r1], v[r1], t_c - t_s, params))
        out.append((t_c - t_s, d))
    return out


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """A column as integer codes into its distinct values, and those values (in order of appearance)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()  # the values it holds, not every value of its dictionary
    encoded = column.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


@register_measure("lane_changes")
def lane_changes(scenario, result) -> dict[str, float]:
    """The sweep measure `lane_changes`: stuck CAVs' lane changes per run, their mean maneuver time and mean
    fast-lane disruption (`lane_change_measures` on the run's trajectories)."""
    lengths = {name: spec.length_m for name, spec in scenario.demand.vehicle_types.items()}
    changes = lane_change_measures(result.trajectories, scenario.simulation.warmup_s, lengths, CooperativeParams())
    return {
        "stuck_lane_changes": float(len(changes)),
        "maneuver_time_s": float(np.mean([c[0] for c in changes])) if changes else math.nan,
        "disruption": float(np.mean([c[1] for c in changes])) if changes else math.nan,
    }


METRICS = {
    "throughput_vph": "throughput [veh/h]",
    "maneuver_time_s": "maneuver time [s]",
    "disruption": "fast-lane disruption D",
    "control_energy_per_trip_cav_m2ps3": "CAV control energy per trip [m²/s³]",
    "mean_delay_s": "mean delay [s]",
    "stuck_lane_changes": "lane changes of stuck CAVs per run",
}


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and 95 % CI half-width of every metric per (variant, demand, share)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["demand_vph"], row["demand.cav_share"]), []).append(row)
    out = []
    for (variant, demand, share), members in sorted(
        groups.items(), key=lambda kv: (VARIANTS.index(kv[0][0]), kv[0][1:])
    ):
        entry = {"variant": variant, "demand_vph": demand, "cav_share": share, "runs": len(members)}
        for metric in (*METRICS, "collisions"):
            mean, half = mean_ci([m[metric] for m in members])
            entry[metric], entry[f"{metric}_ci95"] = mean, half
        out.append(entry)
    return out


def plot_study(summary: list[dict], out_dir: Path) -> list[Path]:
    """One figure per metric: the metric against demand, a panel per CAV share, a line per variant."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    shares = sorted({e["cav_share"] for e in summary})
    paths = []
    for metric, label in METRICS.items():
        fig = Figure(figsize=(4.2 * len(shares), 3.6))
        axes = fig.subplots(1, len(shares), sharey=True, squeeze=False)
        for ax, share in zip(axes[0], shares, strict=True):
            for variant in VARIANTS:
                points = sorted((e for e in summary if e["variant"] == variant and e["cav_share"] == share),
                                key=lambda e: e["demand_vph"])  # fmt: skip
                if points:
                    ax.errorbar(
                        [e["demand_vph"] for e in points], [e[metric] for e in points],
                        yerr=[0 if math.isnan(e[f"{metric}_ci95"]) else e[f"{metric}_ci95"] for e in points],
                        marker="o", capsize=3, label=variant,
                    )  # fmt: skip
            ax.set_title(f"CAV share {share:g}")
            ax.set_xlabel("fast-lane demand [veh/h]")
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel(label)
        axes[0, -1].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table (mean ± 95 % CI)."""
    head = "| variant | demand veh/h | CAV share | runs | " + " | ".join(METRICS.values()) + " | collisions |"
    lines = [head, "|" + "---|" * (5 + len(METRICS))]
    for e in summary:
        cells = [
            f"{e[m]:.3g} ± {e[f'{m}_ci95']:.2g}" if not math.isnan(e[f"{m}_ci95"]) else f"{e[m]:.3g}" for m in METRICS
        ]
        lines.append(
            f"| {e['variant']} | {e['demand_vph']:g} | {e['cav_share']:g} | {e['runs']} | "
            + " | ".join(cells) + f" | {e['collisions']:.2g} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"
