"""Metric bookkeeping on synthetic world states (no simulator)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cavlab.controllers.longitudinal import Headway
from cavlab.sim.metrics import MetricsCollector, throughput
from cavlab.sim.network import build_network
from cavlab.sim.resolve import load_scenario
from cavlab.world import Arrival, Collision, Departure, StepEvents, WorldState

SCENARIO = load_scenario("highway-lane-change", ["simulation.warmup_s=1", "simulation.duration_s=10"])
TYPES = tuple(SCENARIO.demand.vehicle_types)


def world(t: float, rows: list[tuple[str, int, str, int, float, float, float]]) -> WorldState:
    """rows: (id, slot, type, lane, x, v, a)."""
    ids, slot, typ, lane, x, v, a = (np.array(c) for c in zip(*rows, strict=True)) if rows else [np.zeros(0)] * 7
    type_index = np.array([TYPES.index(name) for name in typ], dtype=np.int16)
    return WorldState(
        time_s=t, ids=ids.astype(object), slot=slot.astype(np.int64), type_index=type_index,
        is_cav=np.array([name == "cav" for name in typ], dtype=bool), controlled=np.zeros(len(ids), bool),
        edge=np.zeros(len(ids), np.int16), lane=lane.astype(np.int16), x_m=x.astype(float),
        speed_mps=v.astype(float), accel_mps2=a.astype(float), length_m=np.full(len(ids), 5.0),
        type_names=TYPES, edge_names=("main",),
    )  # fmt: skip


@pytest.fixture
def collector() -> MetricsCollector:
    return MetricsCollector(SCENARIO, build_network(SCENARIO.road))


def test_lane_changes_hard_braking_energy_and_speed(collector: MetricsCollector) -> None:
    d = (Departure("a", 0, "car", "mainline", 1.0, 0.5), Departure("b", 1, "cav", "mainline", 1.0, 1.5))
    observe = collector.observe
    observe(world(0.5, [("a", 0, "car", 0, 10, 20, 0)]), StepEvents(departures=d[:1]))
    observe(world(1.5, [("a", 0, "car", 0, 12, 20, -5.0), ("b", 1, "cav", 1, 0, 10, 2)]), StepEvents(departures=d[1:]))
    observe(world(1.6, [("a", 0, "car", 1, 14, 19.5, -5.0), ("b", 1, "cav", 1, 1, 10, 0)]), StepEvents())
    observe(world(1.7, [("b", 1, "cav", 0, 2, 10, 0), ("a", 0, "car", 1, 16, 19, -1)]), StepEvents())
    observe(world(1.8, [("a", 0, "car", 1, 18, 19, -6)]), StepEvents(arrivals=(Arrival("b", 1, 1.8),)))
    changes = [(c.vehicle_id, c.from_lane, c.to_lane, c.time_s, c.is_cav) for c in collector.lane_changes]
    assert changes == [("a", 0, 1, 1.6, False), ("b", 1, 0, 1.7, True)]
    # car decel 4.5 m/s²: -5, -5 is one event, -1 ends it, -6 starts a second
    assert collector._hard_braking == 2
    assert collector._energy[0] == pytest.approx(0.5 * (25 + 25 + 1 + 36) * 0.1)
    assert collector._energy[1] == pytest.approx(0.5 * 4 * 0.1)
    # mean over the vehicle-steps after the 1 s warm-up
    assert collector._speed_sum / collector._vehicle_steps == pytest.approx((20 + 10 + 19.5 + 10 + 10 + 19 + 19) / 7)


def test_collisions_after_warmup_are_counted_and_trips_excluded(collector: MetricsCollector) -> None:
    crash = Collision(2.0, "a", "b", "collision", "main_0", 10.0)
    collector.observe(world(2.0, [("c", 2, "car", 0, 1, 1, 0)]), StepEvents(collisions=(crash,)))
    assert collector.collisions == [crash]


def test_throughput_counts_vehicles_entering_after_warmup(tmp_path: Path) -> None:
    network = build_network(SCENARIO.road)
    lines = ["<detector>"]
    for det in network.detectors:
        for begin, n in ((0, 100), (60, 3), (120, 4)):
            lines.append(
                f'<interval begin="{begin}" end="{begin + 60}" id="{det.id}" nVehContrib="{n}" nVehEntered="{n}"/>'
            )
    lines.append("</detector>")
    out = tmp_path / "det.xml"
    out.write_text("\n".join(lines))
    result = throughput(out, network, start_s=60, end_s=180)
    assert result["throughput_per_lane_vph"] == {"0": 210.0, "1": 210.0}
    assert result["throughput_vph"] == 420.0
    assert [p["x_m"] for p in result["detectors"]] == [1000.0, 2900.0]


def test_safety_of_controlled_vehicles_on_the_true_state(collector: MetricsCollector) -> None:
    """A commanded CAV closes on its leader at 10 m/s from 20 m (TTC 2 s) to 12 m (TTC 1.2 s); the
    uncommanded car behind it, closer still, does not count; nor does the time before the warm-up."""

    def step(t: float, gap_m: float) -> WorldState:
        w = world(t, [("car", 0, "car", 0, 0.0, 30, 0), ("cav", 1, "cav", 0, 6.0, 30, 0),
                      ("lead", 2, "car", 0, 11.0 + gap_m, 20, 0)])  # fmt: skip
        return WorldState(**{**w.__dict__, "controlled": np.array([False, True, False])})

    for t, gap in ((0.5, 5.0), (1.1, 20.0), (1.2, 16.0), (1.3, 12.0)):
        collector.observe(step(t, gap), StepEvents())
    assert collector._min_gap_controlled_m == 12.0
    assert collector._critical_ttc_steps == 1  # 12 m at 10 m/s closing: 1.2 s < 1.5 s; 16 m: 1.6 s
    assert math.isinf(collector._min_slack_controlled_m)  # no safe gap given: none measured


def test_the_safe_gap_slack_of_controlled_vehicles_is_measured_on_the_true_state() -> None:
    """With the controller's safe gap 0.9 s·v + 3 m, the commanded CAV at 30 m/s keeps 40, 32, then 28 m:
    slack 10, 2, −2 m; the least is reported."""
    collector = MetricsCollector(SCENARIO, build_network(SCENARIO.road), Headway(0.9, 3.0))
    for t, gap in ((1.1, 40.0), (1.2, 32.0), (1.3, 28.0)):
        w = world(t, [("cav", 1, "cav", 0, 6.0, 30, 0), ("lead", 2, "car", 0, 11.0 + gap, 30, 0)])
        collector.observe(WorldState(**{**w.__dict__, "controlled": np.array([True, False])}), StepEvents())
    assert collector._min_slack_controlled_m == pytest.approx(28.0 - (0.9 * 30 + 3.0))
