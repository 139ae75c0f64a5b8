"""The lane-change study: statistics, the uniform lane-change measures, and a tiny real study."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

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
    VARIANTS,
    aggregate,
    lane_change_measures,
    study_sweep,
)
from cavlab.experiments.sweep import load_rows, load_sweep, plan
from cavlab.runs.stats import mean_ci


def test_mean_ci_uses_student_t() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2)  # t_{0.975,3} · s/√n
    assert mean_ci([7.0]) == (7.0, pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(mean_ci([math.nan, math.nan])[0])


def test_aggregate_groups_points() -> None:
    rows = [
        {"variant": "cooperative", "demand_vph": 800.0, "demand.cav_share": 1.0, "seed": s, "throughput_vph": 100.0 + s,
         "maneuver_time_s": 5.0, "disruption": 0.0, "control_energy_per_trip_cav_m2ps3": 1.0, "mean_delay_s": 2.0,
         "stuck_lane_changes": 3, "collisions": 0}
        for s in range(3)
    ]  # fmt: skip
    (entry,) = aggregate(rows)
    assert entry["runs"] == 3 and entry["throughput_vph"] == 101.0
    assert entry["throughput_vph_ci95"] == pytest.approx(4.302652730 * 1.0 / math.sqrt(3))  # t_{0.975,2} · s/√n


def test_no_cooperation_sets_lccooperative_zero_on_every_type() -> None:
    (run,) = plan(study_sweep(["no-cooperation"], [1000.0], [0.5], seeds=1))
    sets = run.overrides
    assert "control.controller=sumo" in sets
    assert {s.split(".")[2] for s in sets if "lane_change.cooperative=0" in s} == {"truck", "slow_car", "car", "cav"}
    assert "demand.flows.2.vehicles_per_hour=1000.0" in sets and "demand.flows.0.vehicles_per_hour=450.0" in sets
    assert dict(run.labels) == {"variant": "no-cooperation", "demand_vph": 1000.0}


def test_the_shipped_sweep_is_the_default_study() -> None:
    default = study_sweep(list(VARIANTS), [800.0, 1200.0, 1600.0, 2000.0], [0.3, 1.0], seeds=10)
    assert load_sweep("lane-change-study") == default
    assert len(plan(default)) == 320


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


@pytest.mark.sumo
def test_a_tiny_study_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = CliRunner().invoke(
        app,
        ["study", "--demand", "1200", "--cav-share", "1.0", "--variant", "cooperative", "--variant", "sumo-default",
         "--seeds", "1", "--duration", "120", "--warmup", "30", "--workers", "2", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "study.json").read_text())
    assert [e["variant"] for e in summary] == ["cooperative", "sumo-default"]
    assert all(e["collisions"] == 0 for e in summary)
    assert (out / "throughput_vph.png").read_bytes()[:4] == b"\x89PNG"
    assert "| cooperative | 1200 |" in (out / "study.md").read_text()
    # the same study as a sweep file through `cavlab sweep`: the same rows
    spec = study_sweep(["cooperative", "sumo-default"], [1200.0], [1.0], seeds=1, duration_s=120.0, warmup_s=30.0)
    sweep_file = tmp_path / "study.yaml"
    sweep_file.write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    again = CliRunner().invoke(app, ["sweep", str(sweep_file), "--workers", "2", "--out", str(tmp_path / "sweep")])
    assert again.exit_code == 0, again.output

    def rows(folder: Path) -> dict[str, dict]:
        return {r["run_id"]: {k: v for k, v in r.items() if k != "wall_time_s" and v == v} for r in load_rows(folder)}

    assert rows(tmp_path / "sweep") == rows(out) and len(rows(out)) == 2
    assert all(r["stuck_lane_changes"] >= 0 and "maneuver_time_s" in r for r in rows(out).values())


def test_study_rejects_unknown_variants() -> None:
    result = CliRunner().invoke(app, ["study", "--variant", "magic"])
    assert result.exit_code == 2 and "unknown variant 'magic' (allowed: cooperative, selfish" in result.output
