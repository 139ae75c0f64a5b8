"""Scenario loading: the shipped files, overrides, and one clear error for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cavlab.config.scenario import Scenario, apply_override, parse_scenario, shipped_scenarios
from cavlab.errors import ScenarioError
from cavlab.sim.resolve import load_scenario, resolve_scenario

MINIMAL = """
name: tiny
road: {kind: highway, length_m: 1000, lanes: 2}
demand:
  flows:
    - {vehicles_per_hour: 1200}
"""


def test_shipped_scenarios_validate_and_cover_every_road_kind() -> None:
    names = set(shipped_scenarios())
    assert {"highway-lane-change", "on-ramp-merge", "lane-drop"} <= names
    kinds = {load_scenario(n).road.kind for n in names}
    assert kinds == {"highway", "on_ramp", "lane_drop", "network"}


def test_defaults_fill_in() -> None:
    s = parse_scenario(MINIMAL)
    assert s.simulation.step_length_s == 0.1
    assert s.simulation.backend == "libsumo"
    assert s.control.controller == "sumo"
    assert s.context.weather == "clear"
    assert set(s.demand.vehicle_types) == {"car", "cav"}
    assert s.road.detector_positions_m == [900.0]


@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_resolved_yaml_round_trips(name: str) -> None:
    s = load_scenario(name)
    assert parse_scenario(s.to_yaml()) == s


def test_overrides_set_nested_fields_list_items_and_parse_values_as_yaml() -> None:
    s = load_scenario(
        "highway-lane-change",
        ["simulation.seed=7", "demand.flows.2.vehicles_per_hour=1800", "demand.cav_share=0.25", "context.weather=fog"],
    )
    assert s.simulation.seed == 7
    assert s.demand.flows[2].vehicles_per_hour == 1800.0
    assert s.demand.cav_share == 0.25
    assert s.context.weather == "fog"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("simulation.seed", "must look like key.path=value"),
        ("=3", "must look like key.path=value"),
        ("demand.flows.9.vehicles_per_hour=1", "'demand.flows.9' needs a list index 0..2"),
        ("demand.flows.x.lane=1", "'demand.flows.x' needs a list index 0..2"),
        ("name.first=1", "'name' is a string, not a block"),
        ("simulation.seed=[1", "the value is not valid YAML"),
    ],
)
def test_bad_overrides_name_the_problem(override: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_scenario("highway-lane-change", [override])


def _error(text: str, *overrides: str) -> str:
    with pytest.raises(ScenarioError) as info:
        resolve_scenario(parse_scenario(text, source="s.yaml", overrides=overrides), "s.yaml")
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    assert message.startswith("s.yaml")
    return message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "demand.flows.0.vehicles_per_hour=-5",
            "demand.flows.0.vehicles_per_hour: Input should be greater than or equal to 0 (got -5)",
        ),
        ("road.lanes=0", "road.lanes: Input should be greater than or equal to 1 (got 0)"),
        ("simulation.step_length_s=0", "simulation.step_length_s: Input should be greater than 0 (got 0)"),
        ("simulation.step_length_s=-0.1", "simulation.step_length_s: Input should be greater than 0"),
        ("simulation.backend=carla", "simulation.backend: Input should be 'libsumo', 'traci' or 'gui' (got 'carla')"),
        ("road.lanes=two", "road.lanes: Input should be a valid integer"),
        ("road.kind=roundabout", "Input should be 'highway', 'on_ramp', 'lane_drop' or 'network'"),
        ("road.colour=red", "unknown field 'road.colour' (allowed: detectors_m, kind, lane_drop, lane_width_m, lanes"),
        ("demand.flows.0.speed=3", "unknown field 'demand.flows.0.speed' (allowed: arrivals, cav_share, depart_speed"),
        ("demand.vehicle_types.car.colour=1", "unknown field 'demand.vehicle_types.car.colour' (allowed: accel_mps2"),
        ("simulation.warmup_s=2000", "warmup_s = 2000 must be less than duration_s = 600"),
        ("simulation.duration_s=600.05", "duration_s = 600.05 must be a multiple of step_length_s"),
        ("demand.flows.0.lane=5", "demand.flows.0: lane 5 does not exist; the mainline has lanes 0..1"),
        ("demand.flows.0.route=ramp", "demand.flows.0: route 'ramp' needs road.kind 'on_ramp'"),
        ("demand.cav_type=car", "cav_type 'car' has kind 'hdv', expected 'cav'"),
        ("demand.flows.0.vehicle_types={bus: 1}", "flows.0: vehicle type 'bus' is not defined (known: car, cav)"),
        ("road.detectors_m=[1500]", "detector at 1500 m lies beyond the road end (1000 m)"),
        ("control.controller=magic", "unknown controller 'magic' (available: cooperative, selfish, sumo)"),
        ("control.params={gain: 1}", "control.params.gain: unknown parameter of controller 'sumo' (allowed: none)"),
        ("context.light=twilight", "context.light: Input should be 'day', 'dusk' or 'night'"),
        ("road.ramp={merge_position_m: 100}", "'ramp' is only allowed with kind 'on_ramp', not 'highway'"),
    ],
)
def test_invalid_values_give_one_line_naming_field_and_allowed_values(override: str, expected: str) -> None:
    assert expected in _error(MINIMAL, override)


def test_missing_field_is_named() -> None:
    assert "missing field 'road'" in _error("name: x\ndemand: {flows: [{vehicles_per_hour: 1}]}\n")


def test_yaml_syntax_error_gives_line_and_column() -> None:
    message = _error("name: x\nroad: {kind: highway\ndemand: [\n")
    assert message.startswith("s.yaml:3:")
    assert "YAML syntax error" in message


def test_not_a_mapping() -> None:
    assert "expected a mapping of blocks" in _error("- just\n- a list\n")


def test_unknown_scenario_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope' \(shipped: .*highway-lane-change"):
        load_scenario("nope")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"missing\.yaml: no such file"):
        load_scenario(tmp_path / "missing.yaml")


def test_unreadable_file_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ScenarioError, match=r"binary\.yaml' is not UTF-8 text"):
        load_scenario(path)


# ----------------------------------------------------------------------------- fuzzing

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
_FIELDS = [
    "name", "road.kind", "road.length_m", "road.lanes", "road.ramp", "road.lane_drop", "road.detectors_m",
    "demand.flows", "demand.flows.0.lane", "demand.flows.0.vehicles_per_hour", "demand.flows.0.vehicle_types",
    "demand.vehicle_types", "demand.cav_share", "demand.cav_type", "control.controller", "control.params",
    "simulation.step_length_s", "simulation.duration_s", "simulation.warmup_s", "simulation.seed",
    "outputs.trajectory_period_s", "context.sensor_faults", "unknown.block",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS), _values), max_size=4))
def test_fuzzed_scenarios_validate_or_raise_scenario_error(edits: list[tuple[str, object]]) -> None:
    raw = yaml.safe_load(load_scenario("on-ramp-merge").to_yaml())
    try:
        for key, value in edits:
            apply_override(raw, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        result = resolve_scenario(parse_scenario(yaml.safe_dump(raw), source="fuzz.yaml"), "fuzz.yaml")
    except ScenarioError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(result, Scenario)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_fuzzed_text_validates_or_raises_scenario_error(text: str) -> None:
    try:
        parse_scenario(text, source="fuzz.yaml")
    except ScenarioError as exc:
        assert "\n" not in str(exc)


def test_builtin_vehicle_types_are_refined_not_replaced() -> None:
    s = parse_scenario(
        MINIMAL, overrides=["demand.vehicle_types.cav.tau_s=0.8", "demand.vehicle_types.car.lane_change.cooperative=0"]
    )
    assert s.demand.vehicle_types["cav"].kind == "cav" and s.demand.vehicle_types["cav"].tau_s == 0.8
    assert s.demand.vehicle_types["cav"].sigma == 0.0  # the built-in CAV's other fields stay
    assert s.demand.vehicle_types["car"].lane_change.cooperative == 0.0
    assert s.demand.vehicle_types["car"].lane_change.speed_gain == 1.0


def test_overrides_fill_empty_blocks() -> None:
    raw = yaml.safe_load(load_scenario("lane-drop").to_yaml())
    assert raw["road"]["ramp"] is None
    apply_override(raw, "road.ramp.merge_position_m=500")
    assert raw["road"]["ramp"] == {"merge_position_m": 500}


@pytest.mark.parametrize(
    ("value", "ok"), [("max", True), ("12.5", True), ("fast", False), ("-1", False), ("true", False)]
)
def test_depart_speed_names_its_allowed_values(value: str, ok: bool) -> None:
    override = f"demand.flows.0.depart_speed={value}"
    if ok:
        parse_scenario(MINIMAL, overrides=[override])
    else:
        message = _error(MINIMAL, override)
        assert "demand.flows.0.depart_speed: must be 'max', 'desired', 'avg' or a speed in [0, 70] m/s" in message


def test_override_messages_stay_on_one_line_and_name_empty_lists() -> None:
    raw = {"road": {"kind": "highway"}, "demand": {"flows": []}}
    with pytest.raises(ScenarioError, match=r"'demand.flows.0' indexes an empty list$"):
        apply_override(raw, "demand.flows.0.lane=1")
    with pytest.raises(ScenarioError) as info:
        apply_override(raw, "road.kind.lanes=null\n...")
    assert str(info.value) == "override 'road.kind.lanes=null\\n...': 'road.kind' is a string, not a block"
