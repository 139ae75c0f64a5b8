"""Bad scenario inputs through the real CLI (`cavlab validate`, `run`, `show`): hostile files and
values that make no sense each end fast in exit code 2 and one `error:` line naming the file or
field and what is allowed, with no traceback and nothing written. Also: `--help` keeps units."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.controllers import controller_params
from cavlab.envs.config import EnvConfigError, env_config
from cavlab.errors import ScenarioError
from cavlab.hw.targets import Target, targets

MINIMAL = """name: tiny
road: {kind: highway, length_m: 1000, lanes: 2}
demand:
  flows:
    - {vehicles_per_hour: 1200}
"""

Args = Callable[[Path], list[str]]


def _scenario(tmp: Path, content: str | bytes = MINIMAL) -> str:
    path = tmp / "s.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _validate(content: str | bytes) -> Args:
    return lambda tmp: ["validate", _scenario(tmp, content)]


def _show(content: str | bytes) -> Args:
    return lambda tmp: ["show", _scenario(tmp, content)]


def _run(*sets: str, options: tuple[str, ...] = ()) -> Args:
    """`cavlab run` of MINIMAL with `--set`s; every case fails before SUMO starts."""
    return lambda tmp: [
        "run",
        _scenario(tmp),
        "--out",
        str(tmp / "run"),
        *options,
        *(a for s in sets for a in ("--set", s)),
    ]


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "fifo.yaml")
    return ["validate", str(tmp / "fifo.yaml")]


def _huge_file(tmp: Path) -> list[str]:
    path = Path(_scenario(tmp))
    os.truncate(path, 100 * 1024 * 1024)  # sparse: 100 MB to stat, nothing on disk
    return ["validate", str(path)]


def _directory(tmp: Path) -> list[str]:
    (tmp / "scenarios.yaml").mkdir()
    return ["validate", str(tmp / "scenarios.yaml")]


def _symlink_loop(tmp: Path) -> list[str]:
    os.symlink("loop.yaml", tmp / "loop.yaml")
    return ["validate", str(tmp / "loop.yaml")]


def _bomb(levels: int = 6, width: int = 10) -> str:
    """Flow-style "billion laughs": `width ** levels` strings from a few hundred bytes."""
    rows = [f"&a0 [{', '.join(['lol'] * width)}]"]
    rows += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(rows) + "]"


_NESTED = "[" * 50_000 + "]" * 50_000
_INF = "Input should be a finite number"

CASES = [
    # ---- hostile files
    pytest.param(
        _validate(MINIMAL + f"laughs: {_bomb()}\n"), ["s.yaml", "expands to over 100000 values"], id="alias-bomb"
    ),
    pytest.param(_validate(_NESTED), ["s.yaml", "nested too deeply", "at most 64 levels"], id="nested-brackets"),
    pytest.param(
        _validate("".join(" " * i + "a:\n" for i in range(2000))), ["nested too deeply"], id="nested-mappings"
    ),
    pytest.param(_validate(MINIMAL + "x: &x [*x]\n"), ["s.yaml", "cycles are not allowed"], id="recursive-alias"),
    pytest.param(_huge_file, ["s.yaml", "100.0 MiB", "at most 4.0 MiB"], id="100-MB-file"),
    pytest.param(_validate(b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), ["s.yaml", "not UTF-8", "text file"], id="binary"),
    pytest.param(_validate(MINIMAL + "x: \x00\n"), ["s.yaml", "U+0000", "not allowed in YAML"], id="nul-character"),
    pytest.param(_fifo, ["fifo.yaml", "not a regular file", "give a file"], id="fifo"),
    pytest.param(lambda tmp: ["validate", "/dev/zero"], ["/dev/zero", "not a regular file"], id="dev-zero"),
    pytest.param(_directory, ["scenarios.yaml", "is a directory", "give a file"], id="directory"),
    pytest.param(_symlink_loop, ["loop.yaml", "cannot read it"], id="symlink-loop"),
    pytest.param(lambda tmp: ["validate", str(tmp / "gone.yaml")], ["gone.yaml", "no such file"], id="missing-file"),
    pytest.param(_validate(""), ["s.yaml", "expected a mapping of blocks", "got empty"], id="empty-file"),
    pytest.param(_validate("- road\n- demand\n"), ["expected a mapping of blocks", "got a list"], id="top-level-list"),
    pytest.param(_validate("just words\n"), ["expected a mapping of blocks", "got a string"], id="top-level-string"),
    pytest.param(
        _validate(MINIMAL.replace("lanes: 2}", "lanes: 2, lanes: 3}")),
        ["s.yaml", "line 2", "duplicate key 'lanes'", "once"],
        id="duplicate-key",
    ),
    pytest.param(_validate(MINIMAL + "name: other\n"), ["line 6", "duplicate key 'name'"], id="duplicate-block"),
    pytest.param(
        _validate(MINIMAL.replace("lanes: 2", "lanes: " + "9" * 5000)),
        ["s.yaml", "line 2", "at most 4300 digits"],
        id="5000-digit-integer",
    ),
    pytest.param(
        _validate(MINIMAL + "x: 2020-13-01\n"), ["line 6", "not a valid timestamp", "1..12"], id="impossible-date"
    ),
    pytest.param(
        _validate(MINIMAL + "x: !!python/object/apply:os.system ['touch pwned']\n"),
        ["s.yaml:6:", "could not determine a constructor", "python/object/apply"],
        id="python-tag",
    ),
    pytest.param(_validate("name: x\nroad: {kind: highway\n"), ["s.yaml:3:", "YAML syntax error"], id="syntax-error"),
    pytest.param(_validate(MINIMAL + "---\nname: b\n"), ["YAML syntax error", "another document"], id="two-documents"),
    pytest.param(
        _validate(MINIMAL + "weather: fog\n"),
        ["unknown field 'weather'", "allowed: context, control, demand"],
        id="unknown-block",
    ),
    pytest.param(_validate(MINIMAL + "1: x\n"), ["s.yaml", "Keys should be strings"], id="integer-key"),
    pytest.param(_show(MINIMAL + f"laughs: {_bomb()}\n"), ["s.yaml", "expands to over"], id="show-alias-bomb"),
    pytest.param(lambda tmp: ["show", "/dev/zero"], ["/dev/zero", "not a regular file"], id="show-dev-zero"),
    # ---- infinite or NaN where only a lower bound was checked
    *(
        pytest.param(_run(f"{field}={value}"), [field, _INF], id=f"{field.rsplit('.', 1)[-1]}={value}")
        for field, value in [
            ("demand.vehicle_types.car.min_gap_m", ".inf"),
            ("demand.vehicle_types.car.length_m", ".inf"),
            ("demand.vehicle_types.cav.tau_s", ".inf"),
            ("demand.vehicle_types.car.accel_mps2", ".inf"),
            ("demand.vehicle_types.car.emergency_decel_mps2", ".inf"),
            ("demand.vehicle_types.car.lane_change.strategic", ".inf"),
            ("simulation.lane_change_duration_s", ".inf"),
            ("simulation.duration_s", "-.inf"),
            ("perception.latency_s", ".inf"),
            ("perception.track_hold_s", ".inf"),
            ("outputs.trajectory_period_s", ".inf"),
            ("outputs.detector_period_s", ".inf"),
            ("demand.cav_share", ".nan"),
            ("demand.flows.0.vehicles_per_hour", ".nan"),
            ("demand.scale", "1e400"),
        ]
    ),
    pytest.param(_run("road.detectors_m=[500, .nan]"), ["road.detectors_m.1", _INF], id="nan-in-a-list"),
    pytest.param(_run("demand.flows.0.vehicle_types={car: .inf}"), ["vehicle_types.car", _INF], id="inf-in-a-dict"),
    pytest.param(
        _run("context.sensor_faults=[{sensor: camera, kind: noise, severity: .nan}]"),
        ["context.sensor_faults.0.severity", _INF],
        id="nan-in-a-nested-block",
    ),
    pytest.param(
        _run("control.controller=cooperative", "control.params.u_max_mps2=.inf"),
        ["control.params.u_max_mps2", _INF],
        id="inf-controller-param",
    ),
    pytest.param(
        _run("control.controller=cooperative", "control.params.max_relaxations=true"),
        ["control.params.max_relaxations", "valid integer"],
        id="bool-controller-param",
    ),
    # ---- values that make no sense
    pytest.param(
        _run("simulation.warmup_s=0", options=("--duration", "1e-9")),
        ["duration_s = 1e-09", "at least one step", "step_length_s = 0.1"],
        id="duration-1e-9",
    ),
    pytest.param(
        _run(options=("--duration", "nan")), ["simulation.duration_s", "valid number"], id="duration-nan-option"
    ),
    pytest.param(_run("road.lanes=true"), ["road.lanes", "valid integer", "got True"], id="lanes-true"),
    pytest.param(
        lambda tmp: ["run", _scenario(tmp), "--set", "road.lanes=true"], ["road.lanes"], id="default-run-directory"
    ),
    pytest.param(_run("road.lanes='2'"), ["road.lanes", "valid integer", "got '2'"], id="lanes-string"),
    pytest.param(_run("road.lanes=2.5"), ["road.lanes", "valid integer"], id="lanes-float"),
    pytest.param(_run("road.length_m=true"), ["road.length_m", "valid number", "got True"], id="length-true"),
    pytest.param(_run("outputs.trajectories=1"), ["outputs.trajectories", "valid boolean"], id="bool-as-1"),
    pytest.param(
        _run("demand.vehicle_types={'my car': {}}", "demand.flows.0.vehicle_types={'my car': 1}"),
        ["demand.vehicle_types", "'my car'", "letters, digits", "SUMO id"],
        id="type-name-with-space",
    ),
    pytest.param(
        _run("demand.vehicle_types={'a\"b': {}}"), ["demand.vehicle_types", "'a\"b'", "letters"], id="type-name-quote"
    ),
    pytest.param(
        _run("demand.vehicle_types.car.min_gap_m=-1"), ["min_gap_m", "greater than or equal to 0"], id="negative-gap"
    ),
    pytest.param(_run("demand.vehicle_types.car.tau_s=100"), ["tau_s", "less than or equal to 10"], id="tau-100-s"),
    pytest.param(
        _run("demand.vehicle_types.car.emergency_decel_mps2=40"),
        ["emergency_decel_mps2", "less than or equal to 15"],
        id="emergency-decel-40",
    ),
    pytest.param(
        _run("simulation.lane_change_duration_s=1000"),
        ["lane_change_duration_s", "less than or equal to 60"],
        id="lane-change-1000-s",
    ),
    pytest.param(
        _run("outputs.trajectory_period_s=1000"),
        ["trajectory_period_s = 1000", "at most simulation.duration_s = 600"],
        id="period-past-the-run",
    ),
    pytest.param(_run(f"simulation.seed={10**30}"), ["simulation.seed", "less than 2147483648"], id="huge-seed"),
    pytest.param(_run(f"road.lanes={10**100}"), ["road.lanes", "less than or equal to 8"], id="huge-lanes"),
    pytest.param(
        _run("road.kind=[x]"), ["road.kind", "'highway', 'on_ramp', 'lane_drop' or 'network'", "(got ['x'])"],
        id="brackets-kept",
    ),
    pytest.param(_run("demand.flows=[]"), ["demand.flows", "at least 1 item"], id="no-flows"),
    # ---- overrides read with the same loader
    pytest.param(_run("simulation.seed={a: 1, a: 2}"), ["override", "duplicate key 'a'"], id="override-duplicate"),
    pytest.param(
        _run(f"simulation.seed={_bomb()}"), ["override 'simulation.seed=", "expands to over"], id="override-bomb"
    ),
    pytest.param(
        _run(f"road.lanes={_NESTED}"), ["override 'road.lanes=", "…'", "nested too deeply"], id="override-deep"
    ),
    pytest.param(
        _run("simulation.seed=[1"), ["override 'simulation.seed=[1'", "not valid YAML"], id="override-not-yaml"
    ),
    pytest.param(_run("simulation.seed"), ["must look like key.path=value"], id="override-without-value"),
    pytest.param(
        _run("road.colour=red"), ["unknown field 'road.colour'", "allowed: detectors_m"], id="override-unknown"
    ),
]


@pytest.mark.parametrize(("make_args", "expected"), CASES)
def test_bad_scenario_input_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_args: Args, expected: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default run directory, runs/..., would land here
    args = make_args(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in expected:
        assert word in lines[0]
    assert elapsed < 15.0, f"took {elapsed:.2f} s: a hang, not a clear error"  # a bound on hangs, not a speed test
    assert sorted(tmp_path.rglob("*")) == before, "nothing is written (no run directory, no runs/)"


def test_valid_scenarios_with_aliases_and_yaml_1_2_floats_still_validate(tmp_path: Path) -> None:
    text = MINIMAL.replace("1000", "1e3") + (
        "  vehicle_types:\n"
        "    slow: &slow {max_speed_mps: 20, length_m: 7.5}\n"
        "    slower: {<<: *slow, max_speed_mps: 15}\n"
    )
    path = _scenario(
        tmp_path, text.replace("{vehicles_per_hour: 1200}", "{vehicles_per_hour: 1200, vehicle_types: {slower: 1}}")
    )
    result = CliRunner().invoke(app, ["validate", path, "--set", "simulation.duration_s=3e2", "--set", "road.lanes=3"])
    assert result.exit_code == 0, result.output
    assert "tiny — highway, 3 lanes, 1000 m" in result.stdout


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_user_model_refuses_inf_and_nan(value: float) -> None:
    with pytest.raises(
        EnvConfigError, match=r"environment option 'reward\.collision': Input should be a finite number"
    ):
        env_config({}, {"reward": {"collision": value}})
    with pytest.raises(EnvConfigError, match=r"'action\.target_speeds_mps\.1': Input should be a finite number"):
        env_config({}, {"action": {"target_speeds_mps": [10, value]}})
    with pytest.raises(ScenarioError, match=r"control\.params\.reaction_time_s: Input should be a finite number"):
        controller_params("cooperative", {"reaction_time_s": value})
    shipped = targets()["x86-cpu"].model_dump()
    with pytest.raises(ValidationError, match="finite number"):
        Target.model_validate({**shipped, "energy_pj": {**shipped["energy_pj"], "dram_byte": value}})


def test_env_options_take_lists_for_tuples_but_no_bools_for_numbers() -> None:
    config = env_config({}, {"action": {"target_speeds_mps": [10, 20]}, "observation": {"features": ["x"]}})
    assert config.action.target_speeds_mps == (10.0, 20.0) and config.observation.features == ("x",)
    with pytest.raises(EnvConfigError, match=r"'observation\.vehicles_count': Input should be a valid integer"):
        env_config({}, {"observation": {"vehicles_count": True}})


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under a click group (typer's own click), with its path of names."""
    found = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
    return found


def test_help_of_every_command_keeps_units_in_brackets() -> None:
    units = 0
    for path, command in _commands(typer.main.get_command(app)):
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        shown = " ".join(result.stdout.split())
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        for text in texts:
            for bracket in re.findall(r"\[[^\]]*\]", text):
                assert " ".join(bracket.split()) in shown, (path, bracket)
                units += 1
    assert units >= 8
    run_help = " ".join(CliRunner().invoke(app, ["run", "--help"]).stdout.split())
    assert "simulation.duration_s [s]" in run_help
    study_help = " ".join(CliRunner().invoke(app, ["study", "--help"]).stdout.split())
    assert "Simulated time per run [s]" in study_help and "Warm-up per run [s]" in study_help
