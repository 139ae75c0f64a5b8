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

import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from cavlab.experiments.sweep import SweepSpec
from cavlab.runs.stats import mean_ci

SCENARIO = "highway-lane-change"
VARIANTS = ("cooperative", "selfish", "sumo-default", "no-cooperation")
STUCK_GAP_M = 60.0
STUCK_SPEED_GAIN_MPS = 2.0


def study_sweep(variants: list[str], demands_vph: list[float], cav_shares: list[float], seeds: int,
                duration_s: float = 600.0, warmup_s: float = 120.0) -> SweepSpec:  # fmt: skip
    """The study as a sweep: named axes `variant` and `demand_vph` (q on the fast lane, 0.45·q and
    0.15·q on the slow lane's two flows), the CAV share, the seeds, and the lane-change measures.
    The shipped sweep `lane-change-study` is this with the defaults of `cavlab study`."""
    from cavlab.config.scenario import load_scenario

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
    """(maneuver time, fast-lane disruption) of every stuck CAV's move from lane 0 to lane 1."""
    from cavlab.controllers.cooperative import disruption_parts

    t = trajectories.to_pydict()
    time_s, lane = np.array(t["t_s"]), np.array(t["lane"])
    x, v = np.array(t["x_m"]), np.array(t["speed_mps"])
    ids = np.array(t["vehicle_id"], dtype=object)
    types = np.array(t["vehicle_type"], dtype=object)
    is_cav = types == "cav"
    length = np.array([lengths[name] for name in types.tolist()])
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
    rows_of: dict[str, np.ndarray] = {}
    for row in np.flatnonzero(is_cav):
        rows_of.setdefault(ids[row], []).append(row)
    state_at = {(ids[r], time_s[r]): (x[r], v[r]) for r in range(len(x)) if lane[r] == 1}
    out = []
    for _vid, rows in rows_of.items():
        rows = np.array(rows)  # in time order
        for a, b in itertools.pairwise(rows):
            if not (lane[a] == 0 and lane[b] == 1 and time_s[b] > warmup_s and stuck[a]):
                continue
            k = int(np.flatnonzero(rows == a)[0])
            while k > 0 and stuck[rows[k - 1]] and lane[rows[k - 1]] == 0:
                k -= 1
            t_s, t_c = time_s[rows[k]], time_s[b]
            group = np.flatnonzero((time_s == t_c) & (lane == 1))
            position = int(np.searchsorted(x[group], x[b]))
            neighbours = [ids[group[j]] for j in (position - 1, position + 1) if 0 <= j < len(group)]
            d = 0.0
            for n in neighbours:
                if (n, t_s) in state_at and (n, t_c) in state_at:
                    (x0, v0), (x1, v1) = state_at[(n, t_s)], state_at[(n, t_c)]
                    d += sum(disruption_parts(x0, v0, x1, v1, t_c - t_s, params))
            out.append((t_c - t_s, d))
    return out


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = sorted({e["cav_share"] for e in summary})
    paths = []
    for metric, label in METRICS.items():
        fig, axes = plt.subplots(1, len(shares), figsize=(4.2 * len(shares), 3.6), sharey=True, squeeze=False)
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
        plt.close(fig)
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
