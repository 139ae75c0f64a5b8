"""The command line: every shipped scenario end to end, clear errors, and clean interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.config.scenario import shipped_scenarios

runner = CliRunner()
CAVLAB = [sys.executable, "-m", "cavlab.cli"]


def cli(*args: str, cwd: Path | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([*CAVLAB, *args], capture_output=True, text=True, cwd=cwd, check=False, **popen)


@pytest.mark.sumo
@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_every_shipped_scenario_runs_end_to_end(name: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = cli("run", name, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "throughput" in done.stdout and str(out) in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == name and summary["seed"] == 42 and summary["steps"] == 6000
    assert summary["versions"]["eclipse-sumo"] == "1.28.0"
    assert summary["metrics"]["throughput_vph"] > 1000
    assert pq.read_table(out / "trajectories.parquet").num_rows == summary["vehicle_steps"]
    for name_ in ("scenario.yaml", "lane_changes.csv", "collisions.csv", "sumo.log", "sumo/run.sumocfg"):
        assert (out / name_).is_file()
    assert "Simulation ended" in (out / "sumo.log").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no partial folder left behind"
    plotted = cli("plot", str(out))
    assert plotted.returncode == 0, plotted.stderr
    for png in ("time_space.png", "speed_heatmap.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.sumo
def test_run_options_override_the_scenario(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["run", "lane-drop", "--seed", "5", "--duration", "60", "--backend", "traci", "--out", str(out), "-q",
         "--set", "simulation.warmup_s=10", "--set", "outputs.trajectory_period_s=1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["seed"], summary["backend"], summary["steps"]) == (5, "traci", 600)
    times = pq.read_table(out / "trajectories.parquet")["t_s"].to_numpy()
    assert set(round(t, 6) for t in times) <= {float(k) for k in range(1, 61)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "nope"],
            "error: unknown scenario 'nope' (shipped: highway, highway-lane-change, lane-drop, on-ramp-merge",
        ),
        (["run", "missing.yaml"], "error: missing.yaml: no such file"),
        (["validate", "lane-drop", "--set", "road.lanes=0"], "road.lanes: Input should be greater than or equal to 1"),
        (["run", "lane-drop", "--backend", "carla"], "simulation.backend: Input should be 'libsumo', 'traci' or 'gui'"),
        (["run", "lane-drop", "--duration", "-5"], "simulation.duration_s: Input should be greater than 0"),
        (["show", "lane-drop", "--set", "seed"], "override 'seed' must look like key.path=value"),
        (["plot", "no/such/run"], "error: no/such/run: no such run directory"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_yaml_syntax_error_from_the_real_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nroad:\n  kind: highway\n   lanes: 2\n")
    done = cli("validate", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert f"{bad}:4:" in done.stderr.replace("\n", "") and "YAML syntax error" in done.stderr


def test_unwritable_or_taken_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["run", "lane-drop", "--out", str(blocker / "run")])
    assert result.exit_code == 2 and "cannot write the output directory" in result.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["run", "lane-drop", "--out", str(taken)])
    assert result.exit_code == 2 and "already exists and is not empty" in result.output
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_list_show_validate(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    for name in shipped_scenarios():
        assert name in listed.output
    shown = runner.invoke(app, ["show", "lane-drop", "--resolved"])
    assert shown.exit_code == 0 and "step_length_s: 0.1" in shown.output
    ok = runner.invoke(app, ["validate", "on-ramp-merge"])
    assert ok.exit_code == 0 and "ok" in ok.output


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.sumo
@pytest.mark.parametrize(
    ("backend", "sig"), [("traci", signal.SIGINT), ("traci", signal.SIGTERM), ("libsumo", signal.SIGINT)]
)
def test_interrupt_stops_sumo_and_leaves_no_partial_run(backend: str, sig: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*CAVLAB, "run", "highway-lane-change", "--backend", backend, "--duration", "3000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
        # a test runner started in the background by a shell ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 30
    sumo: list[int] = []
    while time.time() < deadline:
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".run.partial")]
        sumo = _children(proc.pid) if backend == "traci" else []
        if partial and (sumo or backend == "libsumo") and any(partial[0].glob("sumo/*.sumocfg")):
            break
        time.sleep(0.1)
    time.sleep(1.0)  # well inside the loop
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == [], "no run directory, partial or complete"
    time.sleep(0.2)
    assert not [pid for pid in sumo if _alive(pid)], "SUMO child still running"


def test_error_text_keeps_brackets() -> None:
    result = runner.invoke(app, ["validate", "lane-drop", "--set", "name=Bad Name"])
    assert result.exit_code == 2
    assert "String should match pattern '^[a-z0-9][a-z0-9_-]*$'" in result.output


def test_show_piped_is_the_file_verbatim(tmp_path: Path) -> None:
    done = cli("show", "highway-lane-change")
    assert done.returncode == 0
    assert done.stdout == shipped_scenarios()["highway-lane-change"].read_text()
    resolved = cli("show", "lane-drop", "--resolved")
    copy = tmp_path / "copy.yaml"
    copy.write_text(resolved.stdout)
    assert cli("validate", str(copy)).returncode == 0


@pytest.mark.sumo
def test_plotting_a_run_without_vehicles_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    result = runner.invoke(
        app, ["run", "lane-drop", "-q", "--duration", "20", "--set", "simulation.warmup_s=5", "--set", "demand.scale=0",
              "--out", str(out)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plotted = runner.invoke(app, ["plot", str(out)])
    assert plotted.exit_code == 2 and "no vehicle data to plot" in plotted.output


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["run", "lane-drop", "--out", str(blocker)])
    assert result.exit_code == 2 and "is a file, not a directory" in result.output
