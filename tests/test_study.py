"""The studies: the sweeps they run, the lane-change measures (stuck CAVs, windowed disruption), the summary
(paired differences, capacity), and a tiny real bottleneck study from the CLI."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.controllers.cooperative import CooperativeParams
from cavlab.experiments.study import (
    STUCK_GAP_M,
    STUCK_SPEED_GAIN_MPS,
    SUMMARY_METRICS,
    VARIANTS,
    bottleneck_sweep,
    capacity,
    lane_change_disruption,
    lane_change_measures,
    lane_change_sweep,
    lane_change_windows,
    offered_demand,
    summarize_study,
)
from cavlab.experiments.sweep import load_rows, load_sweep, plan
from cavlab.runs.stats import mean_ci
from cavlab.sim.resolve import load_scenario


def test_mean_ci_uses_student_t() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2)  # t_{0.975,3} · s/√n
    assert mean_ci([7.0]) == (7.0, pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(mean_ci([math.nan, math.nan])[0])


def test_no_cooperation_sets_lccooperative_zero_on_every_type() -> None:
    (run,) = plan(lane_change_sweep(["no-cooperation"], [1000.0], [0.5], seeds=1))
    sets = run.overrides
    assert "control.controller=sumo" in sets
    assert {s.split(".")[2] for s in sets if "lane_change.cooperative=0" in s} == {"truck", "slow_car", "car", "cav"}
    assert "demand.flows.2.vehicles_per_hour=1000.0" in sets and "demand.flows.0.vehicles_per_hour=450.0" in sets
    assert dict(run.labels) == {"variant": "no-cooperation", "demand_vph": 1000.0}


def test_the_shipped_sweeps_are_the_default_studies() -> None:
    default = lane_change_sweep(list(VARIANTS), [800.0, 1200.0, 1600.0, 2000.0], [0.3, 1.0], seeds=10)
    assert load_sweep("lane-change-study") == default
    ids = [r.run_id for r in plan(default)]
    # the run ids of the lane-change study from before sweeps had a scenario axis: old study directories resume
    assert len(ids) == 320 and ids[0] == "7e36018cb02d6d65"
    assert hashlib.sha1("".join(ids).encode()).hexdigest() == "fb727f265ec1caf93ba1a28e3d788a67c72deb21"
    bottleneck = bottleneck_sweep()
    shipped = load_sweep("bottleneck-study")
    assert shipped == bottleneck and list(shipped.grid) == list(bottleneck.grid)  # the same order: the same ids
    assert [r.run_id for r in plan(shipped)] == [r.run_id for r in plan(bottleneck)]
    assert len(plan(shipped)) == 3 * 4 * 3 * 4 * 10


def test_the_bottleneck_sweep_plans_every_scenario_with_its_own_overrides() -> None:
    """No SUMO: the runs, their scenarios, labels, overrides and ids of a sweep over three scenarios."""
    scenarios = ["lane-drop", "on-ramp-merge", "highway-lane-change"]
    spec = bottleneck_sweep(scenarios, [1.0, 2.0], [0.5], ["sumo-default", "no-cooperation"], seeds=2,
                            duration_s=150.0, warmup_s=60.0)  # fmt: skip
    runs = plan(spec)
    assert len(runs) == 3 * 2 * 1 * 2 * 2 and len({r.run_id for r in runs}) == len(runs)
    assert [r.scenario for r in runs[::8]] == scenarios  # scenario by scenario, in the order given
    assert spec.grid["variant"]["sumo-default"] == ["control.controller=sumo"]  # the same in every scenario
    for run in runs:
        labels = dict(run.labels)
        assert list(labels) == ["scenario", "variant"] and labels["scenario"] == run.scenario
        assert {"simulation.duration_s=150.0", "simulation.warmup_s=60.0", "demand.cav_share=0.5"} <= set(run.overrides)
        assert run.measures == ("lane_changes", "lane_change_disruption")
        off = {s.split(".")[2] for s in run.overrides if s.endswith("lane_change.cooperative=0")}
        if labels["variant"] == "no-cooperation":  # every vehicle type of that scenario, and no other
            assert off == set(load_scenario(run.scenario).demand.vehicle_types)
        else:
            assert off == set()
    assert {s.split(".")[2] for r in runs for s in r.overrides if s.endswith("cooperative=0") and
            r.scenario == "lane-drop"} == {"car", "cav"}  # fmt: skip
    # the same point in another scenario is another run; the same sweep plans the same ids
    assert [r.run_id for r in plan(spec)] == [r.run_id for r in runs]
    one = plan(bottleneck_sweep(["lane-drop"], [1.0, 2.0], [0.5], ["sumo-default", "no-cooperation"], seeds=2,
                                duration_s=150.0, warmup_s=60.0))  # fmt: skip
    assert {r.run_id for r in one} < {r.run_id for r in runs}  # a run's id does not depend on the other scenarios
    assert offered_demand(spec)[("lane-drop", 2.0)] == 2.0 * (800 + 1200 + 1200)
    assert offered_demand(spec)[("on-ramp-merge", 1.0)] == 2800 + 500  # the loops at 2400 m see the ramp's flow


def test_lane_change_measures_on_a_hand_made_trajectory() -> None:
    """A CAV behind a slow truck from t = 1 s, changes lane at t = 4 s between two cars that cruise."""
    rows = []
    for k in range(1, 61):
        t = k * 0.1
        rows.append((t, "truck", "truck", 0, 100.0 + 20.0 * t, 20.0))
        rows.append((t, "cav1", "cav", 0 if t < 4.0 else 1, 60.0 + 20.0 * t, 20.0))
        rows.append((t, "front", "car", 1, 150.0 + 30.0 * t, 30.0))  # cruises: no disruption
        rows.append(
            (
                t,
                "rear",
                "car",
                1,
                20.0 + 30.0 * t - (0.5 * (t - 1.0) ** 2 if t > 1 else 0.0),
                30.0 - (t - 1.0 if t > 1 else 0.0),
            )
        )  # brakes at 1 m/s² from t = 1 s
    columns = ["t_s", "vehicle_id", "vehicle_type", "lane", "x_m", "speed_mps"]
    table = pa.table(dict(zip(columns, zip(*rows, strict=True), strict=True)))
    lengths = {"truck": 12.0, "cav": 5.0, "car": 5.0}
    ((wait, disruption),) = lane_change_measures(table, 0.0, lengths, CooperativeParams())
    assert wait == pytest.approx(4.0 - 0.1)  # stuck from the first sample: gap 40 − 12 = 28 m ≤ 60 m
    assert disruption > 0  # the rear car braked; the front car cruised


def reference_lane_change_measures(trajectories, warmup_s, lengths, params):
    """The first implementation of `lane_change_measures` (rows through `to_pydict` and Python loops),
    kept as the reference the vectorised one must agree with exactly."""
    from cavlab.controllers.cooperative import disruption_parts

    t = trajectories.to_pydict()
    time_s, lane = np.array(t["t_s"]), np.array(t["lane"])
    x, v = np.array(t["x_m"]), np.array(t["speed_mps"])
    ids = np.array(t["vehicle_id"], dtype=object)
    types = np.array(t["vehicle_type"], dtype=object)
    is_cav = types == "cav"
    length = np.array([lengths[name] for name in types.tolist()])
    order = np.lexsort((x, lane, time_s))
    time_s, lane, x, v, ids, is_cav, length = (a[order] for a in (time_s, lane, x, v, ids, is_cav, length))
    same_group = (time_s[1:] == time_s[:-1]) & (lane[1:] == lane[:-1])
    leader_gap = np.full(len(x), np.inf)
    leader_speed = np.full(len(x), np.inf)
    leader_gap[:-1][same_group] = (x[1:] - length[1:] - x[:-1])[same_group]
    leader_speed[:-1][same_group] = v[1:][same_group]
    steps, step_index = np.unique(time_s, return_inverse=True)
    fast = lane == 1
    sums = np.bincount(step_index[fast], weights=v[fast], minlength=len(steps))
    counts = np.bincount(step_index[fast], minlength=len(steps))
    fast_mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    stuck = (lane == 0) & (leader_gap <= STUCK_GAP_M)
    stuck &= leader_speed <= fast_mean[step_index] - STUCK_SPEED_GAIN_MPS
    rows_of: dict = {}
    for row in np.flatnonzero(is_cav):
        rows_of.setdefault(ids[row], []).append(row)
    state_at = {(ids[r], time_s[r]): (x[r], v[r]) for r in range(len(x)) if lane[r] == 1}
    out = []
    for rows in rows_of.values():
        rows = np.array(rows)
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


def synthetic_trajectories(seed: int, vehicles: int = 60, steps: int = 200, dt: float = 0.5) -> pa.Table:
    """Vehicles on lanes -1, 0 and 1 that enter and leave at random times and change lanes at random, slow trucks
    on lane 0 (CAVs get stuck behind them), rows shuffled, the recorder's column types (lane int16)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["cav", "car", "truck", "slow_car"], size=vehicles, p=[0.4, 0.3, 0.2, 0.1])
    enter = rng.integers(0, steps // 2, vehicles)
    leave = np.minimum(steps, enter + rng.integers(steps // 4, steps, vehicles))
    x0 = rng.uniform(0, 1500, vehicles)
    cruise = np.where(kinds == "truck", 14.0, np.where(kinds == "slow_car", 18.0, rng.uniform(22, 32, vehicles)))
    rows = []
    for k in range(vehicles):
        lane = 0 if kinds[k] == "truck" else int(rng.choice([0, 1, -1], p=[0.6, 0.35, 0.05]))
        x = x0[k]
        for step in range(enter[k], leave[k]):
            if kinds[k] != "truck" and rng.uniform() < 0.04:
                lane = int(rng.choice([0, 1, -1], p=[0.45, 0.5, 0.05]))
            v = cruise[k] + rng.normal(0, 1) if lane != 0 or kinds[k] == "truck" else min(cruise[k], 17.0)
            x += v * dt
            rows.append((round(step * dt, 3), f"v{k}", str(kinds[k]), lane, round(x, 1), round(float(v), 2)))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    types = [pa.float64(), pa.string(), pa.string(), pa.int16(), pa.float64(), pa.float64()]
    names = ["t_s", "vehicle_id", "vehicle_type", "lane", "x_m", "speed_mps"]
    return pa.table([pa.array(c, ty) for c, ty in zip(zip(*rows, strict=True), types, strict=True)], names=names)


@pytest.mark.parametrize("seed", range(4))
def test_lane_change_measures_match_the_reference_exactly(seed: int) -> None:
    lengths = {"cav": 5.0, "car": 4.5, "truck": 12.0, "slow_car": 4.0}
    params = CooperativeParams()
    table = synthetic_trajectories(seed)
    if seed == 1:  # ties in position (5 m grid)
        table = table.set_column(4, "x_m", pc.multiply(pc.round(pc.divide(table["x_m"], 5.0)), 5.0))
    if seed == 2:  # several chunks, dictionary-encoded strings
        table = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
        for i, name in ((1, "vehicle_id"), (2, "vehicle_type")):
            table = table.set_column(i, name, pc.dictionary_encode(table[name]))
    for warmup_s in (0.0, 30.0):
        expected = reference_lane_change_measures(table, warmup_s, lengths, params)
        got = lane_change_measures(table, warmup_s, lengths, params)
        assert got == expected  # the same changes, in the same order, to the last bit
        assert len(expected) >= 8
        assert any(d > 0 for _, d in expected) and any(d == 0 for _, d in expected)  # with and without neighbours
        assert len({wait for wait, _ in expected}) > 3  # stuck periods of several lengths
    assert lane_change_measures(table.slice(0, 0), 0.0, lengths, params) == []
    with pytest.raises(KeyError):
        lane_change_measures(table, 0.0, {"cav": 5.0}, params)  # a vehicle type without a length, as before


def window_table() -> pa.Table:
    """Samples every second, t = 0 … 30 s, lanes 0 and 1 (see `test_windowed_disruption_on_a_hand_made_table`)."""

    def piecewise(t: float, x0: float, v0: float, t1: float, v1: float) -> tuple[float, float]:
        """At v0 from x0 until t1, then at v1."""
        return (x0 + v0 * t, v0) if t <= t1 else (x0 + v0 * t1 + v1 * (t - t1), v1)

    vehicles = {  # id: (type, lane at t, state at t, present at t)
        "c": ("cav", lambda t: 0 if t < 10 else 1, lambda t: (100 + 20 * t, 20.0)),
        "f1": ("car", lambda t: 1, lambda t: piecewise(t, 30, 25, 10, 20)),  # right behind c at t = 10: 280 m
        "f2": ("car", lambda t: 1, lambda t: (25.0 * t, 25.0)),  # then this one (250 m): cruises, D = 0
        "f3": ("car", lambda t: 1, lambda t: piecewise(t, -50, 25, 10, 10)),  # third behind: not counted
        "lead": ("car", lambda t: 1, lambda t: piecewise(t, 400, 25, 10, 15)),  # ahead of c: not counted
        "e": ("cav", lambda t: 0 if t < 6 else 1, lambda t: (1000 + 20 * t, 20.0)),  # window from t = −2: skipped
        "g": ("car", lambda t: 1 if t < 3 else 0, lambda t: (2000 + 20 * t, 20.0)),  # at t = 3 = warm-up: not after
        "k": ("cav", lambda t: 0 if t < 15 else 1, lambda t: (3000 + 20 * t, 20.0)),
        "m": ("car", lambda t: 1, lambda t: (2990 + 20 * t, 20.0)),  # right behind k, leaves the road at t = 20
        "n": ("car", lambda t: 1, lambda t: piecewise(t, 2900, 20, 15, 18)),  # then this one: slows down
        "h": ("car", lambda t: 1 if t < 25 else 0, lambda t: (600 + 30 * t, 30.0)),  # window to t = 33: skipped
    }
    rows = []
    for t in range(31):
        for name, (kind, lane, state) in vehicles.items():
            if name == "m" and t > 20:
                continue
            rows.append((float(t), name, kind, lane(t), *state(t)))
    rows = rows[::-1]  # the order of the rows does not matter
    names = ["t_s", "vehicle_id", "vehicle_type", "lane", "x_m", "speed_mps"]
    types = [pa.float64(), pa.string(), pa.string(), pa.int16(), pa.float64(), pa.float64()]
    return pa.table([pa.array(c, ty) for c, ty in zip(zip(*rows, strict=True), types, strict=True)], names=names)


def hand_disruption(x0: float, v0: float, x1: float, v1: float, span: float, p: CooperativeParams) -> float:
    """D of one vehicle, written out: γ_x(x1 − x0 − v0·T)² + γ_v(v1 − v0)², γ_x = γ/(Δv·t_avg)², γ_v = (1 − γ)/Δv²."""
    dv = max(abs(p.v_max_mps - v0), abs(p.v_min_mps - v0))
    return (p.disruption_gamma / (dv * p.disruption_time_s) ** 2 * (x1 - x0 - v0 * span) ** 2
            + (1 - p.disruption_gamma) / dv**2 * (v1 - v0) ** 2)  # fmt: skip


def test_windowed_disruption_on_a_hand_made_table() -> None:
    params = CooperativeParams()
    table = window_table()
    w = lane_change_windows(table, 3.0, ["cav"], params)
    assert w.vehicle_id == ["e", "c", "k", "h"]  # g changed at the warm-up's end, not after it
    assert w.time_s.tolist() == [6.0, 10.0, 15.0, 25.0]
    assert w.is_cav.tolist() == [True, True, True, False]
    assert w.from_lane.tolist() == [0, 0, 0, 1] and w.to_lane.tolist() == [1, 1, 1, 0]
    # c: f1 from (80 m, 25 m/s) at t = 2 to (440 m, 20 m/s) at t = 18; f2 cruises (0); f3 and lead not counted
    d_c = hand_disruption(80.0, 25.0, 440.0, 20.0, 16.0, params)
    # k: m has left at t + 8 = 23 (left out); n from (3040, 20) at t = 7 to (3200 + 18·8, 18) at t = 23
    d_k = hand_disruption(3040.0, 20.0, 3344.0, 18.0, 16.0, params)
    assert d_c > 0.01 and d_k > 0.001
    assert w.disruption[1] == pytest.approx(d_c, rel=1e-12) and w.disruption[2] == pytest.approx(d_k, rel=1e-12)
    assert np.isnan(w.disruption[0]) and np.isnan(w.disruption[3])  # windows that leave the recorded run
    assert w.followers.tolist() == [0, 2, 1, 0]
    # the followers' mean speed change: c's f1 25 → 20 m/s and f2 cruising; k's n 20 → 18 m/s
    assert w.speed_change_mps[1:3].tolist() == pytest.approx([-2.5, -2.0])
    assert np.isnan(w.speed_change_mps[0]) and np.isnan(w.speed_change_mps[3])
    # several chunks and dictionary-encoded strings: the same
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    for i, name in ((1, "vehicle_id"), (2, "vehicle_type")):
        chunked = chunked.set_column(i, name, pc.dictionary_encode(chunked[name]))
    again = lane_change_windows(chunked, 3.0, ["cav"], params)
    assert again.vehicle_id == w.vehicle_id and np.array_equal(again.disruption, w.disruption, equal_nan=True)
    # the windows shrink: at ±4 s, e's window (2 … 10 s) is inside; m is then recorded at both ends for k
    short = lane_change_windows(table, 3.0, ["cav"], params, window_s=4.0)
    assert not np.isnan(short.disruption[0]) and short.followers.tolist()[2] == 2
    assert len(lane_change_windows(table.slice(0, 0), 0.0, ["cav"], params).time_s) == 0
    # the sweep measure: means over the windows inside the run, every lane change per hour after the warm-up
    scenario = load_scenario("lane-drop", ["simulation.duration_s=30", "simulation.warmup_s=3"])
    m = lane_change_disruption(scenario, SimpleNamespace(trajectories=table))
    hours = 27 / 3600
    assert m["disruption_per_lc_cav"] == pytest.approx((d_c + d_k) / 2) and math.isnan(m["disruption_per_lc_hdv"])
    assert m["disruption_per_lc_all"] == pytest.approx((d_c + d_k) / 2)
    assert m["follower_speed_change_mps"] == pytest.approx(-2.25)
    assert m["lc_per_hour_cav"] == pytest.approx(3 / hours) and m["lc_per_hour_hdv"] == pytest.approx(1 / hours)
    assert m["lc_per_hour_all"] == pytest.approx(4 / hours)
    assert (m["lc_windows_cav"], m["lc_windows_hdv"], m["lc_windows_all"]) == (2.0, 0.0, 2.0)


def baseline_rows(scenario: str, throughput: dict[float, dict[float, float]], variant: str = "sumo-default"):
    """Rows of two seeds per (level, share): throughput[level][share] ± 10 veh/h."""
    return [{"scenario": scenario, "variant": variant, "demand.scale": scale, "demand.cav_share": share, "seed": seed,
             "throughput_vph": q + (10.0 if seed else -10.0)}
            for scale, by_share in throughput.items() for share, q in by_share.items() for seed in (0, 1)]  # fmt: skip


def test_the_capacity_rule_on_synthetic_rows() -> None:
    offered = {(name, s): 2000.0 * s for name in ("a", "b", "c") for s in (0.5, 1.0, 1.5, 2.0)}
    rows = baseline_rows("a", {0.5: {0.2: 1010, 1.0: 990}, 1.0: {0.2: 1950, 1.0: 1980},
                               1.5: {0.2: 2800, 1.0: 2880}, 2.0: {0.2: 3900, 1.0: 3900}})  # fmt: skip
    rows += baseline_rows("a", {s: {0.2: 9999.0, 1.0: 9999.0} for s in (0.5, 1.0, 1.5, 2.0)}, "cooperative")  # ignored
    rows += baseline_rows("b", {s: {0.5: 2000.0 * s} for s in (0.5, 1.0, 1.5, 2.0)})
    rows += baseline_rows("c", {s: {0.5: 1800.0 * s} for s in (0.5, 1.0, 1.5, 2.0)})
    found = capacity(rows, offered)
    a = found["a"]
    # 1.5: mean 2840 of 3000 offered (0.947 < 0.95); 2.0 is within 5 % again, but the scan stopped at 1.5
    assert (a["capacity_scale"], a["capacity_vph"], a["reached"]) == (1.0, 2000.0, True)
    assert [lv["ratio"] for lv in a["levels"]] == pytest.approx([1.0, 0.9825, 2840 / 3000, 0.975])
    assert a["by_share"] == {"0.2": 1.0, "1": 2.0}  # at share 1.0 alone, 2880 / 3000 = 0.96 passes
    assert a["max_throughput_vph"] == 3900 and a["levels"][0]["runs"] == 4
    assert (found["b"]["capacity_scale"], found["b"]["reached"]) == (2.0, False)  # never falls short
    assert (found["c"]["capacity_scale"], found["c"]["capacity_vph"], found["c"]["reached"]) == (None, None, True)
    assert capacity(rows, offered, tolerance=0.1)["c"]["capacity_scale"] == 2.0  # 0.9 of the demand everywhere


def test_the_summary_pairs_each_variant_with_sumo_default_by_seed() -> None:
    def row(scenario: str, variant: str, seed: int, q: float, **more) -> dict:
        return {"scenario": scenario, "demand.scale": 1.0, "demand.cav_share": 0.5, "variant": variant, "seed": seed,
                "throughput_vph": q, "maneuver_time_s": 5.0 + seed, "collisions": 0.0, **more}  # fmt: skip

    base = [1000.0, 1100.0, 1300.0]
    scenarios = ("lane-drop", "highway-lane-change")
    rows = [row(name, "sumo-default", s, q) for name in scenarios for s, q in enumerate(base)]
    rows += [row(name, "cooperative", s, q + 10 * (s + 1)) for name in scenarios for s, q in enumerate(base)]
    summary = summarize_study(rows[::-1], {("lane-drop", 1.0): 3200.0, ("highway-lane-change", 1.0): 2450.0})
    cells = summary["cells"]
    assert [(e["scenario"], e["variant"]) for e in cells] == [
        ("highway-lane-change", "cooperative"), ("highway-lane-change", "sumo-default"),
        ("lane-drop", "cooperative"), ("lane-drop", "sumo-default")]  # fmt: skip
    coop = cells[2]
    assert coop["runs"] == 3 and coop["offered_vph"] == 3200.0 and coop["throughput_vph"] == pytest.approx(1153.33333)
    # paired: the differences 10, 20, 30 (their CI is narrow; the unpaired one would span the seeds' spread)
    assert coop["throughput_vph_diff"] == pytest.approx(20.0)
    assert coop["throughput_vph_diff_ci95"] == pytest.approx(4.302652730 * 10.0 / math.sqrt(3))
    assert coop["throughput_vph_ci95"] > 10 * coop["throughput_vph_diff_ci95"]
    assert "throughput_vph_diff" not in cells[3]  # the baseline itself
    assert math.isnan(coop["maneuver_time_s"]) and cells[0]["maneuver_time_s"] == 6.0  # highway-lane-change only
    assert math.isnan(coop["disruption_per_lc_cav"])  # not in the rows: NaN, not an error
    assert all(m in e and f"{m}_ci95" in e for e in cells for m in SUMMARY_METRICS)
    assert set(summary["capacity"]) == {"lane-drop", "highway-lane-change"}


@pytest.mark.sumo
def test_a_tiny_study_runs_end_to_end(tmp_path: Path) -> None:
    """2 scenarios × 1 level × 1 share × 2 variants × 1 seed, 150 s, from the CLI; then as a sweep file."""
    out = tmp_path / "study"
    result = CliRunner().invoke(
        app,
        ["study", "--scenario", "lane-drop", "--scenario", "on-ramp-merge", "--scale", "1.0", "--cav-share", "0.5",
         "--variant", "sumo-default", "--variant", "no-cooperation", "--seeds", "1", "--duration", "150",
         "--warmup", "60", "--workers", "2", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "study.json").read_text())
    cells = {(e["scenario"], e["scale"], e["cav_share"], e["variant"]): e for e in summary["cells"]}
    assert set(cells) == {(s, 1.0, 0.5, v) for s in ("lane-drop", "on-ramp-merge")
                          for v in ("sumo-default", "no-cooperation")}  # fmt: skip
    for (_, _, _, variant), e in cells.items():
        assert e["runs"] == 1 and all(m in e for m in SUMMARY_METRICS)
        assert e["throughput_vph"] > 0 and e["lc_per_hour_all"] > 0 and e["collisions"] == 0
        assert e["disruption_per_lc_all"] >= 0 and e["maneuver_time_s"] is None  # not highway-lane-change
        assert ("throughput_vph_diff" in e) == (variant == "no-cooperation")
    assert cells[("lane-drop", 1.0, 0.5, "sumo-default")]["offered_vph"] == 3200.0
    assert set(summary["capacity"]) == {"lane-drop", "on-ramp-merge"}
    assert all(c["levels"][0]["offered_vph"] > 0 for c in summary["capacity"].values())
    assert (out / "throughput_vph.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "study.md").read_text()
    assert "| lane-drop | 1 | 3200 | 0.5 | sumo-default | 1 |" in report and "| on-ramp-merge |" in report
    assert "capacity of lane-drop (sumo-default)" in " ".join(result.output.split())
    # the same study as a sweep file through `cavlab sweep`: the same rows
    spec = bottleneck_sweep(["lane-drop", "on-ramp-merge"], [1.0], [0.5], ["sumo-default", "no-cooperation"], seeds=1,
                            duration_s=150.0, warmup_s=60.0)  # fmt: skip
    sweep_file = tmp_path / "study.yaml"
    sweep_file.write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    again = CliRunner().invoke(app, ["sweep", str(sweep_file), "--workers", "2", "--out", str(tmp_path / "sweep")])
    assert again.exit_code == 0, again.output

    def rows(folder: Path) -> dict[str, dict]:
        return {r["run_id"]: {k: v for k, v in r.items() if k != "wall_time_s" and v == v} for r in load_rows(folder)}

    assert rows(tmp_path / "sweep") == rows(out) and len(rows(out)) == 4
    assert {r["scenario"] for r in rows(out).values()} == {"lane-drop", "on-ramp-merge"}
    generic = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert len(generic) == 4 and {e["scenario"] for e in generic} == {"lane-drop", "on-ramp-merge"}


def test_study_rejects_unknown_variants() -> None:
    result = CliRunner().invoke(app, ["study", "--variant", "magic"])
    assert result.exit_code == 2 and "unknown variant 'magic' (allowed: cooperative, selfish" in result.output
