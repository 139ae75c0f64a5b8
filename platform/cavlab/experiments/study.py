"""The studies of the cooperative lane change, run as sweeps (cavlab.experiments.sweep: fresh processes, resumable).

**The bottleneck study** (`cavlab study`, the shipped sweep `bottleneck-study`, `bottleneck_sweep`): the
controller variants where lane changes limit traffic. Each point (scenario × demand level × CAV share ×
variant × seed) is one run of `highway-lane-change`, `lane-drop` or `on-ramp-merge` with every flow
multiplied by the demand level (`demand.scale`). Variants:

- `cooperative`: the cooperative controller (cavlab.controllers.cooperative);
- `selfish`: C takes the nearest gap as fast as it can, nobody cooperates;
- `sumo-default`: SUMO's LC2013 drives everyone, with its default cooperation (lcCooperative 1);
- `no-cooperation`: LC2013 with lcCooperative = 0 for every vehicle type *of that scenario* (so the variant's
  overrides differ by scenario: the sweep gives them per scenario, `variant_overrides`).

**The lane-change study** (the shipped sweep `lane-change-study`, `lane_change_sweep`): the same variants
on `highway-lane-change` only, over the fast-lane demand q (q veh/h on the fast lane, 0.6·q on the slow
lane, three quarters of it slow human-driven vehicles).

Measures (registered for every sweep):

- `lane_change_disruption` (`lane_change_windows`): every lane change after the warm-up, whatever drove it,
  and the disruption of the two vehicles behind the changer in its new lane from 8 s before to 8 s after
  it, D = Σ γ_x(x(t+8) − x(t−8) − v(t−8)·16)² + γ_v(v(t+8) − v(t−8))² (the controller's own metric,
  `disruption_parts`); mean D per CAV, per HDV and per lane change, lane changes per hour;
- `lane_changes` (`lane_change_measures`): for each CAV that moves from lane 0 to lane 1 after being stuck
  (a slower leader within 60 m, the fast lane at least 2 m/s faster), the *maneuver time* from the start of
  that stuck period to the lane change, and the *fast-lane disruption* of its new front and rear neighbours
  over that time; the bottleneck study reports it on highway-lane-change only (`STUCK_SCENARIOS`).

The bottleneck study's summary (`summarize_study`): per (scenario, level, share, variant) the mean and 95 % CI
of every metric of `SUMMARY_METRICS`, the difference of each variant to `sumo-default` with a paired CI over
the seeds, and the capacity each scenario shows under `sumo-default` (`capacity`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cavlab.config.scenario import Scenario
from cavlab.controllers.cooperative import CooperativeParams, disruption_parts
from cavlab.experiments.sweep import SCENARIO_AXIS, SweepSpec, register_measure
from cavlab.runs.stats import format_mean_ci, mean_ci
from cavlab.sim.resolve import load_scenario

SCENARIO = "highway-lane-change"  # the lane-change study's
SCENARIOS = ("highway-lane-change", "lane-drop", "on-ramp-merge")
SCALES = (0.5, 1.0, 1.5, 2.0)  # demand levels: every flow × this
SHARES = (0.2, 0.5, 1.0)
VARIANTS = ("cooperative", "selfish", "sumo-default", "no-cooperation")
BASELINE = "sumo-default"
STUCK_SCENARIOS = frozenset({SCENARIO})  # where the stuck-CAV measure means what it says
STUCK_METRICS = ("maneuver_time_s", "stuck_lane_changes", "disruption")
STUCK_GAP_M = 60.0
STUCK_SPEED_GAIN_MPS = 2.0
WINDOW_S = 8.0  # the disruption window: WINDOW_S before to WINDOW_S after a lane change
FOLLOWERS = 2  # the vehicles behind the changer in its new lane that the window measures
CAPACITY_TOLERANCE = 0.05
_TIME_TOL_S = 1e-6


# ----------------------------------------------------------------------------- the sweeps


def variant_overrides(variant: str, scenario: str) -> list[str]:
    """A variant's overrides in one scenario (`no-cooperation` names the scenario's vehicle types)."""
    if variant == "no-cooperation":
        types = load_scenario(scenario).demand.vehicle_types
        return ["control.controller=sumo", *(f"demand.vehicle_types.{t}.lane_change.cooperative=0" for t in types)]
    return {"cooperative": ["control.controller=cooperative"], "selfish": ["control.controller=selfish"],
            "sumo-default": ["control.controller=sumo"]}[variant]  # fmt: skip


def _variant_axis(variants: Iterable[str], scenarios: list[str]) -> dict[str, Any]:
    """The named axis `variant`: each label's overrides as one list where they are the same in every scenario,
    else per scenario."""
    axis: dict[str, Any] = {}
    for variant in variants:
        per = {scenario: variant_overrides(variant, scenario) for scenario in scenarios}
        first = per[scenarios[0]]
        axis[variant] = first if all(sets == first for sets in per.values()) else per
    return axis


SUMMARY_METRICS = {
    "throughput_vph": "throughput [veh/h]",
    "mean_delay_s": "mean delay [s]",
    "disruption_per_lc_cav": "D per CAV lane change",
    "disruption_per_lc_hdv": "D per HDV lane change",
    "disruption_per_lc_all": "D per lane change",
    "follower_speed_change_mps": "followers' speed change per lane change [m/s]",
    "lc_per_hour_cav": "CAV lane changes [1/h]",
    "lc_per_hour_all": "lane changes [1/h]",
    "collisions": "collisions per run",
    "hard_braking_events": "hard braking per run",
    "control_energy_per_trip_cav_m2ps3": "CAV control energy per trip [m²/s³]",
    "maneuver_time_s": "stuck CAVs' maneuver time [s]",
}
"""What the bottleneck study's summary reports per cell (maneuver time on `STUCK_SCENARIOS` only)."""

STUDY_METRICS = [*SUMMARY_METRICS, "lc_per_hour_hdv", "lc_windows_cav", "lc_windows_hdv", "stuck_lane_changes"]
"""What `cavlab sweep bottleneck-study` aggregates (its summary.json)."""


def bottleneck_sweep(scenarios: Iterable[str] = SCENARIOS, scales: Iterable[float] = SCALES,
                     shares: Iterable[float] = SHARES, variants: Iterable[str] = VARIANTS, seeds: int = 10,
                     duration_s: float = 480.0, warmup_s: float = 120.0) -> SweepSpec:  # fmt: skip
    """The bottleneck study as a sweep: the grid axis `scenario`, the demand level `demand.scale`, the CAV
    share, the named axis `variant` (`no-cooperation` per scenario), the seeds and both lane-change
    measures. The shipped sweep `bottleneck-study` is this with the defaults of `cavlab study`."""
    scenarios = list(scenarios)
    return SweepSpec(
        set=[f"simulation.duration_s={float(duration_s)}", f"simulation.warmup_s={float(warmup_s)}"],
        grid={SCENARIO_AXIS: scenarios, "demand.scale": [float(s) for s in scales],
              "demand.cav_share": [float(s) for s in shares], "variant": _variant_axis(variants, scenarios)},
        seeds=seeds, measures=["lane_changes", "lane_change_disruption"], metrics=STUDY_METRICS,
    )  # fmt: skip


LANE_CHANGE_METRICS = ["throughput_vph", "maneuver_time_s", "disruption", "control_energy_per_trip_cav_m2ps3",
                       "mean_delay_s", "stuck_lane_changes", "collisions", "hard_braking_events"]  # fmt: skip


def lane_change_sweep(variants: list[str], demands_vph: list[float], cav_shares: list[float], seeds: int,
                      duration_s: float = 600.0, warmup_s: float = 120.0) -> SweepSpec:  # fmt: skip
    """The lane-change study as a sweep: named axes `variant` and `demand_vph` (q on the fast lane, 0.45·q and
    0.15·q on the slow lane's two flows), the CAV share, the seeds, and the stuck-CAV measures. The shipped
    sweep `lane-change-study` is this with its defaults (4 variants, q ∈ {800, 1200, 1600, 2000}, shares
    {0.3, 1.0}, 10 seeds)."""
    overrides = _variant_axis(variants, [SCENARIO])
    demand = {q: [f"demand.flows.0.vehicles_per_hour={0.45 * q}", f"demand.flows.1.vehicles_per_hour={0.15 * q}",
                  f"demand.flows.2.vehicles_per_hour={q}"] for q in demands_vph}  # fmt: skip
    return SweepSpec(
        scenario=SCENARIO, set=[f"simulation.duration_s={duration_s}", f"simulation.warmup_s={warmup_s}"],
        grid={"variant": overrides, "demand_vph": demand, "demand.cav_share": cav_shares},
        seeds=seeds, measures=["lane_changes"], metrics=LANE_CHANGE_METRICS,
    )  # fmt: skip


# ----------------------------------------------------------------------------- measures


def _numbers(trajectories: pa.Table, name: str, dtype: type) -> np.ndarray:
    return np.asarray(trajectories.column(name).to_numpy(), dtype=dtype)


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """A column as integer codes into its distinct values, and those values (in order of appearance)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()  # the values it holds, not every value of its dictionary
    encoded = column.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


@dataclass(frozen=True)
class LaneChangeWindows:
    """Every lane change after the warm-up (in time order, then by vehicle), with the disruption of the vehicles
    behind it in its new lane over its window."""

    time_s: np.ndarray  # the first sample on the new lane
    vehicle_id: list[str]
    is_cav: np.ndarray
    from_lane: np.ndarray
    to_lane: np.ndarray
    disruption: np.ndarray  # NaN where the window leaves the recorded run
    followers: np.ndarray  # how many of the vehicles behind were measured (present at both ends of the window)
    speed_change_mps: np.ndarray  # their mean v(t₁) − v(t₀) (NaN where none was measured): D counts gains too


def lane_change_windows(trajectories: pa.Table, warmup_s: float, cav_types: Iterable[str], params: Any,
                        window_s: float = WINDOW_S, followers: int = FOLLOWERS) -> LaneChangeWindows:  # fmt: skip
    """Every lane change of the trajectories after `warmup_s` (a vehicle's lane differs from its previous
    sample's; at the first sample on the new lane, t) and its disruption: for each of the `followers` vehicles
    right behind the changer in the new lane at t (by position; ties in the table's order), the controller's
    metric from t − `window_s` to t + `window_s`, D = Σ γ_x(x(t₁) − x(t₀) − v(t₀)(t₁ − t₀))² +
    γ_v(v(t₁) − v(t₀))² (`disruption_parts` with `params`), at the recorded samples nearest t ∓ `window_s`.
    A window that begins before the first or ends after the last recorded sample is skipped (NaN); a vehicle
    behind that is not recorded at both ends of the window (it entered or left the road) is left out of D."""
    time_s, lane = _numbers(trajectories, "t_s", np.float64), _numbers(trajectories, "lane", np.int64)
    x, v = _numbers(trajectories, "x_m", np.float64), _numbers(trajectories, "speed_mps", np.float64)
    ids, id_names = _codes(trajectories.column("vehicle_id"))
    types, type_names = _codes(trajectories.column("vehicle_type"))
    cav_types = set(cav_types)
    is_cav = np.array([name in cav_types for name in type_names], dtype=bool)[types]
    steps, step = np.unique(time_s, return_inverse=True)
    # each vehicle's samples in time order: a lane change where the lane differs from the one before
    by_vehicle = np.lexsort((step, ids))
    a, b = by_vehicle[:-1], by_vehicle[1:]
    moved = (ids[a] == ids[b]) & (lane[a] != lane[b]) & (time_s[b] > warmup_s + 1e-9)
    change, before = b[moved], a[moved]
    in_order = np.lexsort((ids[change], step[change]))
    change, before = change[in_order], before[in_order]
    # the vehicles behind the changer in its new lane: the rows before its own among its (step, lane) by position
    by_place = np.lexsort((x, lane, step))
    rank = np.empty(len(x), dtype=np.int64)
    rank[by_place] = np.arange(len(x))
    behind = rank[change][:, None] - np.arange(1, followers + 1)[None, :]
    follower_rows = by_place[np.maximum(behind, 0)]
    present = (behind >= 0) & (step[follower_rows] == step[change][:, None])
    present &= lane[follower_rows] == lane[change][:, None]
    # the window: the samples nearest t ∓ window_s, inside the recorded run
    t0, t1 = time_s[change] - window_s, time_s[change] + window_s
    first, last = (steps[0], steps[-1]) if len(steps) else (math.inf, -math.inf)
    inside = (t0 >= first - _TIME_TOL_S) & (t1 <= last + _TIME_TOL_S)
    i0, i1 = _nearest(steps, t0), _nearest(steps, t1)
    # (vehicle, step) -> its row
    keys = ids * len(steps) + step
    key_order = np.argsort(keys, kind="stable")
    sorted_keys = keys[key_order]

    def rows_at(vehicles: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wanted = vehicles * len(steps) + at
        if not len(sorted_keys):
            return np.zeros(wanted.shape, dtype=np.int64), np.zeros(wanted.shape, dtype=bool)
        j = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        return key_order[j], sorted_keys[j] == wanted

    follower_ids = ids[follower_rows]
    r0, found0 = rows_at(follower_ids, i0[:, None])
    r1, found1 = rows_at(follower_ids, i1[:, None])
    measured = present & found0 & found1 & inside[:, None]
    span = steps[i1] - steps[i0] if len(steps) else np.zeros(0)
    d = np.zeros(measured.shape)
    dv = np.where(measured, v[r1] - v[r0], 0.0)
    counted = measured.sum(axis=1)
    for j, k in zip(*np.nonzero(measured), strict=True):
        p, q = r0[j, k], r1[j, k]
        d[j, k] = sum(disruption_parts(float(x[p]), float(v[p]), float(x[q]), float(v[q]), float(span[j]), params))
    return LaneChangeWindows(
        time_s=time_s[change], vehicle_id=[id_names[i] for i in ids[change]], is_cav=is_cav[change],
        from_lane=lane[before], to_lane=lane[change], disruption=np.where(inside, d.sum(axis=1), math.nan),
        followers=counted, speed_change_mps=np.where(counted > 0, dv.sum(axis=1) / np.maximum(counted, 1), math.nan),
    )  # fmt: skip


def _nearest(steps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The index of the sample nearest each time (the earlier one on a tie)."""
    if len(steps) < 2:
        return np.zeros(len(t), dtype=np.int64)
    j = np.clip(np.searchsorted(steps, t), 1, len(steps) - 1)
    return j - ((t - steps[j - 1]) <= (steps[j] - t))


@register_measure("lane_change_disruption")
def lane_change_disruption(scenario: Scenario, result: Any) -> dict[str, float]:
    """The sweep measure `lane_change_disruption` (`lane_change_windows`, the controller's default γ for every
    variant): mean D per lane change of CAVs, of HDVs and of all vehicles (`disruption_per_lc_*`, over the
    windows inside the run), lane changes per hour after the warm-up (`lc_per_hour_*`) and the windows measured
    (`lc_windows_*`)."""
    warmup_s = scenario.simulation.warmup_s
    cav_types = [name for name, spec in scenario.demand.vehicle_types.items() if spec.kind == "cav"]
    w = lane_change_windows(result.trajectories, warmup_s, cav_types, CooperativeParams())
    hours = (scenario.simulation.duration_s - warmup_s) / 3600
    out = {}
    for name, mask in (("cav", w.is_cav), ("hdv", ~w.is_cav), ("all", np.ones(len(w.is_cav), dtype=bool))):
        d = w.disruption[mask]
        d = d[~np.isnan(d)]
        out[f"disruption_per_lc_{name}"] = float(d.mean()) if len(d) else math.nan
        out[f"lc_per_hour_{name}"] = float(np.count_nonzero(mask)) / hours
        out[f"lc_windows_{name}"] = float(len(d))
    dv = w.speed_change_mps[~np.isnan(w.speed_change_mps)]
    out["follower_speed_change_mps"] = float(dv.mean()) if len(dv) else math.nan
    return out


def lane_change_measures(
    trajectories: pa.Table, warmup_s: float, lengths: dict[str, float], params
) -> list[tuple[float, float]]:
    """(maneuver time, fast-lane disruption) of every stuck CAV's move from lane 0 to lane 1, CAV by CAV
    (in the order they first appear), each CAV's moves in time order."""
    time_s, lane = _numbers(trajectories, "t_s", np.float64), _numbers(trajectories, "lane", np.int64)
    x, v = _numbers(trajectories, "x_m", np.float64), _numbers(trajectories, "speed_mps", np.float64)
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


# ----------------------------------------------------------------------------- the bottleneck study's summary


def offered_demand_vph(scenario: Scenario) -> float:
    """The demand offered to the throughput detectors (the most downstream loops): every flow's rate × the
    demand scale, a ramp flow only where those loops lie at or after the merge (every route of cavlab's roads
    runs to the road's end)."""
    last = max(scenario.road.detector_positions_m)
    ramp = scenario.road.ramp
    passes = {"mainline": True, "ramp": ramp is not None and last >= ramp.merge_position_m}
    return scenario.demand.scale * sum(f.vehicles_per_hour for f in scenario.demand.flows if passes[f.route])


def offered_demand(spec: SweepSpec) -> dict[tuple[str, float], float]:
    """(scenario, demand level) -> offered demand [veh/h] for every point of a sweep over `demand.scale`."""
    return {(name, scale): offered_demand_vph(load_scenario(name, [*spec.set, f"demand.scale={scale}"]))
            for name in spec.scenarios for scale in spec.grid.get("demand.scale", [1.0])}  # fmt: skip


def _order(name: str) -> tuple[int, str]:
    """The study's scenarios first, in their order; any other after them, by name."""
    return (SCENARIOS.index(name) if name in SCENARIOS else len(SCENARIOS), name)


def capacity(rows: list[dict], offered: dict[tuple[str, float], float], baseline: str = BASELINE,
             tolerance: float = CAPACITY_TOLERANCE) -> dict[str, dict]:  # fmt: skip
    """Per scenario, the capacity the sweep finds: the largest demand level up to which `baseline`'s mean
    throughput (over its runs at that level, every CAV share and seed) stays within `tolerance` of the demand
    offered (`offered_demand_vph`), scanning the levels upwards and stopping at the first that falls short.
    `capacity_scale` None: even the lowest level falls short; `reached` false: no level falls short (the
    capacity is the top level or more). Also per CAV share (`by_share`, the same rule on that share's runs)."""

    def rule(levels: list[dict]) -> tuple[float | None, bool]:
        found = None
        for level in levels:
            if not level["ratio"] >= 1 - tolerance:  # NaN falls short too
                return found, True
            found = level["scale"]
        return found, False

    def levels_of(members: list[dict], name: str) -> list[dict]:
        by_scale: dict[float, list[float]] = {}
        for r in members:
            by_scale.setdefault(r["demand.scale"], []).append(r.get("throughput_vph"))
        out = []
        for scale in sorted(by_scale):
            mean, _ = mean_ci(by_scale[scale])
            demand = offered[(name, scale)]
            out.append({"scale": scale, "offered_vph": demand, "throughput_vph": mean,
                        "ratio": mean / demand if demand > 0 else math.nan, "runs": len(by_scale[scale])})  # fmt: skip
        return out

    result = {}
    for name in sorted({r[SCENARIO_AXIS] for r in rows if r.get("variant") == baseline}, key=_order):
        members = [r for r in rows if r[SCENARIO_AXIS] == name and r.get("variant") == baseline]
        levels = levels_of(members, name)
        scale, reached = rule(levels)
        by_share = {}
        for share in sorted({r["demand.cav_share"] for r in members}):
            by_share[f"{share:g}"] = rule(levels_of([r for r in members if r["demand.cav_share"] == share], name))[0]
        result[name] = {
            "capacity_scale": scale,
            "capacity_vph": offered[(name, scale)] if scale is not None else None,
            "reached": reached,
            "max_throughput_vph": max((lv["throughput_vph"] for lv in levels), default=math.nan),
            "levels": levels,
            "by_share": by_share,
        }
    return result


CELL = (SCENARIO_AXIS, "demand.scale", "demand.cav_share", "variant")


def summarize_study(rows: list[dict], offered: dict[tuple[str, float], float]) -> dict[str, Any]:
    """The bottleneck study's summary: `cells` (per scenario, level, share and variant: runs, offered demand, and
    every metric of `SUMMARY_METRICS` as mean and 95 % CI half-width over the seeds; for a variant other than
    `sumo-default` also `<metric>_diff` and `<metric>_diff_ci95`, the mean and CI of its per-seed difference to
    `sumo-default` at the same point and seed) and `capacity` (`capacity`)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in CELL), []).append(row)
    cells = []
    for key in sorted(groups, key=lambda k: (_order(k[0]), k[1], k[2], VARIANTS.index(k[3]) if k[3] in VARIANTS
                                             else len(VARIANTS))):  # fmt: skip
        scenario, scale, share, variant = key
        members = groups[key]
        base = {r["seed"]: r for r in groups.get((scenario, scale, share, BASELINE), [])}
        demand = offered.get((scenario, scale), math.nan)
        entry: dict[str, Any] = {"scenario": scenario, "scale": scale, "cav_share": share, "variant": variant,
                                 "runs": len(members), "offered_vph": demand}  # fmt: skip
        for metric in SUMMARY_METRICS:
            applies = metric not in STUCK_METRICS or scenario in STUCK_SCENARIOS
            values = [r.get(metric) for r in members] if applies else []
            entry[metric], entry[f"{metric}_ci95"] = mean_ci(values)
            if variant != BASELINE:
                diffs = [r[metric] - base[r["seed"]][metric] for r in members if applies and r["seed"] in base
                         and r.get(metric) is not None and base[r["seed"]].get(metric) is not None]  # fmt: skip
                entry[f"{metric}_diff"], entry[f"{metric}_diff_ci95"] = mean_ci(diffs)
        cells.append(entry)
    return {"cells": cells, "capacity": capacity(rows, offered)}


def markdown_report(summary: dict[str, Any]) -> str:
    """The summary as Markdown: the cells (mean ± 95 % CI), the differences to sumo-default (paired over seeds)
    and the capacity per scenario."""
    names = list(SUMMARY_METRICS.values())
    lines = ["| scenario | demand level | offered [veh/h] | CAV share | variant | runs | " + " | ".join(names) + " |",
             "|" + "---|" * (6 + len(names))]  # fmt: skip
    for e in summary["cells"]:
        cells = [format_mean_ci(e[m], e[f"{m}_ci95"]) for m in SUMMARY_METRICS]
        lines.append(f"| {e['scenario']} | {e['scale']:g} | {e['offered_vph']:.0f} | {e['cav_share']:g} | "
                     f"{e['variant']} | {e['runs']} | " + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", f"Difference to {BASELINE} (mean ± 95 % CI of the per-seed differences):", "",
              "| scenario | demand level | CAV share | variant | " + " | ".join(f"Δ {n}" for n in names) + " |",
              "|" + "---|" * (4 + len(names))]  # fmt: skip
    for e in summary["cells"]:
        if e["variant"] == BASELINE:
            continue
        cells = [format_mean_ci(e[f"{m}_diff"], e[f"{m}_diff_ci95"], signed=True) for m in SUMMARY_METRICS]
        lines.append(f"| {e['scenario']} | {e['scale']:g} | {e['cav_share']:g} | {e['variant']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", f"Capacity under {BASELINE} (the largest demand level whose mean throughput is within "
              f"{CAPACITY_TOLERANCE:.0%} of the demand offered, scanning upwards):", "",
              "| scenario | capacity level | offered there [veh/h] | max throughput [veh/h] | throughput / offered "
              "per level | per CAV share |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, c in summary["capacity"].items():
        level = "below the lowest level" if c["capacity_scale"] is None else f"{c['capacity_scale']:g}"
        if not c["reached"]:
            level = f"≥ {level} (not reached)"
        offered = "—" if c["capacity_vph"] is None else f"{c['capacity_vph']:.0f}"
        ratios = ", ".join(f"{lv['scale']:g}: {lv['ratio']:.2f}" for lv in c["levels"])
        shares = ", ".join(f"{s}: {'—' if v is None else f'{v:g}'}" for s, v in c["by_share"].items())
        lines.append(f"| {name} | {level} | {offered} | {c['max_throughput_vph']:.0f} | {ratios} | {shares} |")
    return "\n".join(lines) + "\n"


PLOT_METRICS = ("throughput_vph", "mean_delay_s", "disruption_per_lc_cav", "disruption_per_lc_all", "lc_per_hour_all")


def plot_study(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """One figure per metric of `PLOT_METRICS`: the metric against the demand level, a panel per scenario (rows)
    and CAV share (columns), a line per variant with its 95 % CI bars; the throughput panels also show the
    demand offered (dashed)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    from cavlab.runs.plot import save_png

    cells = summary["cells"]
    scenarios = list(dict.fromkeys(e["scenario"] for e in cells))
    shares = sorted({e["cav_share"] for e in cells})
    variants = [v for v in (*VARIANTS, *sorted({e["variant"] for e in cells})) if any(e["variant"] == v for e in cells)]
    variants = list(dict.fromkeys(variants))
    paths = []
    for metric in PLOT_METRICS:
        fig = Figure(figsize=(4.0 * max(1, len(shares)), 3.2 * max(1, len(scenarios))))
        axes = fig.subplots(max(1, len(scenarios)), max(1, len(shares)), squeeze=False)
        for i, scenario in enumerate(scenarios):
            for j, share in enumerate(shares):
                ax = axes[i, j]
                here = [e for e in cells if e["scenario"] == scenario and e["cav_share"] == share]
                for variant in variants:
                    points = sorted((e for e in here if e["variant"] == variant), key=lambda e: e["scale"])
                    if points:
                        ax.errorbar([e["scale"] for e in points], [e[metric] for e in points],
                                    yerr=[0 if math.isnan(e[f"{metric}_ci95"]) else e[f"{metric}_ci95"]
                                          for e in points], marker="o", capsize=3, label=variant)  # fmt: skip
                if metric == "throughput_vph" and here:
                    offered = sorted({(e["scale"], e["offered_vph"]) for e in here})
                    ax.plot([s for s, _ in offered], [q for _, q in offered], "k--", lw=1, label="offered")
                ax.set_title(f"{scenario}, CAV share {share:g}", fontsize=9)
                ax.grid(alpha=0.3)
                if i == len(scenarios) - 1:
                    ax.set_xlabel("demand level (× every flow)")
                if j == 0:
                    ax.set_ylabel(SUMMARY_METRICS[metric])
        if cells:
            axes[0, -1].legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_png(fig, Path(out_dir) / f"{metric}.png", dpi=110))
    return paths
