"""Bad inputs to run directories, sweeps and plots, through the real CLI: exit code 2, one `error:` line naming what
is wrong and what is allowed, no traceback, nothing written (an existing directory unchanged, byte for byte). Also
two `cavlab run` into one directory at once, a full disk, a resumed sweep with a corrupt row, strict JSON summaries
and `cavlab list` in 80 columns."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.config.files import load_json
from cavlab.config.scenario import shipped_scenarios
from cavlab.errors import UserError
from cavlab.experiments.sweep import load_rows
from cavlab.runs.rundir import claimed
from cavlab.sim.resolve import load_scenario

runner = CliRunner()
CAVLAB = [sys.executable, "-m", "cavlab.cli"]
SHORT = ["--set", "simulation.warmup_s=5", "--duration", "20"]
SWEEP = "scenario: highway\nset: [simulation.duration_s=20, simulation.warmup_s=5, outputs.trajectories=false]\n"
CLEAN = SWEEP + "seeds: 2\nmetrics: [throughput_vph, mean_speed_mps, mean_delay_s, lane_changes]\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
)  # "billion laughs": 10 · 6⁷ values


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a folder or anything else that is not a regular file)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
        for p in sorted(root.rglob("*"))
    }


def fails(args: list[str], *words: str) -> str:
    """Run the CLI in-process; assert exit 2 and one `error:` line holding every word; the line."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def cli(*args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([*CAVLAB, *args], capture_output=True, text=True, check=False, **popen)


def comparable(rows: list[dict]) -> dict[str, dict]:
    """Rows by run id, without the wall time, NaN as None (NaN != NaN)."""
    return {r["run_id"]: {k: None if v != v else v for k, v in r.items() if k != "wall_time_s"} for r in rows}


def without_wall_time(value):
    if isinstance(value, dict):
        return {k: without_wall_time(v) for k, v in value.items() if not k.startswith("wall_time_s")}
    if isinstance(value, list):
        return [without_wall_time(v) for v in value]
    return value


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory of `cavlab run` (highway, 20 s)."""
    out = tmp_path_factory.mktemp("run") / "run"
    result = runner.invoke(app, ["run", "highway", *SHORT, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def clean_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sweep directory: two runs of highway, 20 s each."""
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "sweep.yaml").write_text(CLEAN)
    result = runner.invoke(app, ["sweep", str(folder / "sweep.yaml"), "--workers", "2", "--out", str(folder / "out")])
    assert result.exit_code == 0, result.output
    assert "2 runs (0 from before)" in result.output
    return folder / "out"


# ----------------------------------------------------------------------------- bad sweep files and options


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (SWEEP + "grid: {demand.scale: []}\n", ["s.yaml", "grid", "'demand.scale'", "at least one"]),
        (SWEEP + "grid: {variant: {}}\n", ["grid", "'variant'", "at least one"]),
        (SWEEP + "grid: {demand.scale: [1.0, 1.0]}\n", ["grid", "'demand.scale'", "lists 1.0 twice"]),
        (SWEEP + "grid: {demand.scale: 1.0}\n", ["grid", "'demand.scale'", "a list of values or a mapping"]),
        (SWEEP + "seeds: 0\n", ["seeds", "at least 1", "got 0"]),
        (SWEEP + "seeds: -3\n", ["seeds", "at least 1", "got -3"]),
        (SWEEP + "seeds: []\n", ["seeds", "at least one"]),
        (SWEEP + "seeds: true\n", ["seeds", "an integer ≥ 1", "list of integer seeds"]),
        (SWEEP + "seeds: [4, 4]\n", ["seeds", "lists seed 4 twice"]),
        (SWEEP + "seeds: 1000000000\n", ["1000000000 runs", "at most 100000"]),
        (SWEEP + "random: {samples: 2, fields: {demand.scale: {choice: []}}}\n", ["choice", "at least one value"]),
        (SWEEP + "random: {samples: 2, fields: {demand.scale: {uniform: [1.2, 0.8]}}}\n", ["uniform", "low ≤ high"]),
        (SWEEP + "random: {samples: 2, fields: {demand.scale: {uniform: [0.8, .inf]}}}\n", ["uniform", "finite"]),
        (SWEEP + "random: {samples: 0, fields: {demand.scale: {uniform: [0.8, 1]}}}\n", ["samples", "greater than"]),
        (SWEEP + "metrics: []\n", ["metrics", "at least one metric"]),
        (SWEEP + "seeds: 1\nseeds: 2\n", ["s.yaml", "duplicate key 'seeds'"]),
        (SWEEP + "grid: [a\n", ["s.yaml", "YAML syntax error"]),
        ("- scenario: highway\n", ["s.yaml", "a sweep file is a mapping of scenario, set, grid", "got a list"]),
        ("", ["s.yaml", "a sweep file is a mapping", "empty file"]),
        (BOMB, ["s.yaml", "aliases"]),
    ],
)
def test_bad_sweep_files(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    before = tree(tmp_path)
    fails(["sweep", str(path), "--out", str(tmp_path / "out")], *words)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["binary", "fifo", "device", "directory", "huge"])
def test_sweep_files_that_are_not_text_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "s.yaml"
    if kind == "binary":
        path.write_bytes(bytes(range(256)))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("# " + "x" * (5 * 1024 * 1024) + "\n")
    words = {"binary": "not UTF-8", "fifo": "not a regular file", "device": "not a regular file",
             "directory": "is a directory", "huge": "at most 4.0 MiB"}[kind]  # fmt: skip
    before = tree(tmp_path)
    fails(["sweep", str(path), "--out", str(tmp_path / "out")], "sweep file", str(path), words)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("workers", ["-1", "0", "5000"])
def test_workers_out_of_range(tmp_path: Path, workers: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP + "seeds: 1\n")
    fails(["sweep", str(path), "--workers", workers, "--out", str(tmp_path / "out")], "--workers",
          "between 1 and 1024", f"got {workers}")  # fmt: skip
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- sweep output directories


def test_sweeps_refuse_an_out_that_is_not_theirs(tmp_path: Path, run_dir: Path, clean_sweep: Path) -> None:
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(SWEEP + "seeds: 1\n")
    sweep = ["sweep", str(sweep_file), "--out"]
    # a run directory of `cavlab run`: refused, unchanged
    before = tree(run_dir)
    fails([*sweep, str(run_dir)], str(run_dir), "is a run directory", "choose another --out", "a sweep's to resume")
    study = ["study", "--scenario", "highway-lane-change", "--scale", "1", "--cav-share", "0.5", "--variant",
             "sumo-default", "--seeds", "1", "--out", str(run_dir)]  # fmt: skip
    fails(study, str(run_dir), "is a run directory")
    assert tree(run_dir) == before
    # another sweep's directory
    other = tmp_path / "other-sweep"
    shutil.copytree(clean_sweep, other)
    before = tree(other)
    fails([*sweep, str(other)], str(other), "holds another sweep", "sweep.json", "choose another --out")
    assert tree(other) == before
    # a folder holding other things
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    fails([*sweep, str(mine)], str(mine), "not empty and holds no sweep (no sweep.json)")
    assert tree(mine) == {"notes.txt": b"mine"}
    # a file
    fails([*sweep, str(mine / "notes.txt")], "notes.txt", "is a file, not a directory")
    # a place that cannot be written
    fails([*sweep, "/proc/cavlab-sweep"], "/proc/cavlab-sweep", "cannot write the sweep directory")


def test_a_run_cannot_be_written_where_the_os_refuses(tmp_path: Path) -> None:
    fails(["run", "highway", *SHORT, "--out", "/proc/cavlab-run"], "/proc/cavlab-run", "cannot write the output")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(["run", "highway", *SHORT, "--out", str(blocker / "run")], str(blocker), "cannot write the output")
    assert tree(tmp_path) == {"file": b"x"}


# ----------------------------------------------------------------------------- plot


def test_plot_says_what_it_was_given_and_what_it_takes(tmp_path: Path, run_dir: Path, clean_sweep: Path) -> None:
    takes = "cavlab plot takes a run directory written by `cavlab run`"
    before = tree(clean_sweep)
    fails(["plot", str(clean_sweep)], str(clean_sweep), "is a sweep directory", takes)
    assert tree(clean_sweep) == before
    fails(["plot", str(tmp_path / "nope")], "nope", "no such run directory", takes)
    (tmp_path / "file").write_text("x")
    fails(["plot", str(tmp_path / "file")], "is a file, not a run directory", takes)
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["plot", str(empty)], "no summary.json", takes)
    for text, words in (("{}", ["not the summary of a run", "'scenario'"]), ("[1, 2]", ["not the summary of a run"]),
                        ('{"scenario": ', ["not valid JSON"]), ('{"seed": NaN}', ["'NaN' is not JSON"])):  # fmt: skip
        (empty / "summary.json").write_text(text)
        fails(["plot", str(empty)], str(empty / "summary.json"), *words, takes)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    traj = corrupt / "trajectories.parquet"
    traj.write_bytes(traj.read_bytes()[:100])
    before = tree(corrupt)
    fails(["plot", str(corrupt)], str(traj), "cannot read the trajectories")
    assert tree(corrupt) == before
    before = tree(run_dir)
    fails(["plot", str(run_dir), "--out", "/proc/cavlab-plot"], "/proc/cavlab-plot", "cannot write plots")
    assert tree(run_dir) == before


# ----------------------------------------------------------------------------- run directories: one writer


def test_a_claim_is_exclusive_and_a_dead_holder_leaves_it_free(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with claimed(folder):
        assert (tmp_path / ".run.lock").read_text() == f"{os.getpid()}\n"
        refused = pytest.raises(UserError, match=rf"another cavlab process \(pid {os.getpid()}\) is writing")
        with refused, claimed(folder):
            pass
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".run.lock").write_text("999999999\n")  # left by a process that died: no lock held on it
    with claimed(folder):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.sumo
def test_two_runs_into_one_directory(tmp_path: Path) -> None:
    """The second fails at once, before it simulates, while the first (held still with SIGSTOP once it has claimed
    the directory, so that it cannot finish first) goes on and succeeds."""
    out, lock = tmp_path / "run", tmp_path / ".run.lock"
    first = subprocess.Popen(
        [*CAVLAB, "run", "highway", "--duration", "120", "--set", "simulation.warmup_s=5", "--set",
         "outputs.trajectories=false", "--out", str(out), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while first.poll() is None and time.monotonic() < deadline:
            if lock.exists() and lock.read_text() == f"{first.pid}\n":  # written once the lock is held
                break
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and lock.read_text() == f"{first.pid}\n", "the first run never claimed its folder"
        started = time.monotonic()
        second = cli("run", "highway", *SHORT, "--out", str(out), "-q", timeout=60)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().count("\n") == 0 and "Traceback" not in second.stderr
        assert f"{out}: another cavlab process (pid {first.pid}) is writing" in second.stderr
        assert "choose another --out" in second.stderr
        assert time.monotonic() - started < 30
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert json.loads((out / "summary.json").read_text())["duration_s"] == 120.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no lock or partial folder left behind"


@pytest.mark.sumo
def test_a_full_disk_gives_one_line_and_keeps_nothing(tmp_path: Path) -> None:
    """A file-size limit (the OS's EFBIG, as a full disk's ENOSPC) hit writing trajectories.parquet (~60 kB)."""

    def limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with an OSError
        resource.setrlimit(resource.RLIMIT_FSIZE, (24 * 1024, 24 * 1024))

    out = tmp_path / "run"
    done = cli("run", "highway", *SHORT, "--out", str(out), "-q", preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"error: {out}: cannot write the output directory")
    assert "File too large" in line and f"{out}/trajectories.parquet" in line and "nothing was kept" in line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- resumed sweeps


@pytest.mark.sumo
def test_a_corrupt_row_is_reported_and_done_again(tmp_path: Path, clean_sweep: Path) -> None:
    resumed = tmp_path / "resumed"
    shutil.copytree(clean_sweep, resumed)
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(CLEAN)
    row = sorted((resumed / "runs").glob("*.parquet"))[0]
    row.write_bytes(row.read_bytes()[: row.stat().st_size // 2])
    result = runner.invoke(app, ["sweep", str(sweep_file), "--workers", "1", "--out", str(resumed)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(row) in warnings[0] and "cannot read it" in warnings[0]
    assert "done again" in warnings[0] and "2 runs (1 from before)" in result.output
    clean = json.loads((clean_sweep / "summary.json").read_text())
    assert without_wall_time(json.loads((resumed / "summary.json").read_text())) == without_wall_time(clean)
    assert comparable(load_rows(resumed)) == comparable(load_rows(clean_sweep))


def test_a_corrupt_sweep_record_is_reported_and_written_anew(tmp_path: Path, clean_sweep: Path) -> None:
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(CLEAN)
    for text in ('{"scenario": "highw', "{}"):
        resumed = tmp_path / f"resumed-{len(text)}"
        shutil.copytree(clean_sweep, resumed)
        (resumed / "sweep.json").write_text(text)
        result = runner.invoke(app, ["sweep", str(sweep_file), "--out", str(resumed)])
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and str(resumed / "sweep.json") in warnings[0] and "written anew" in warnings[0]
        assert "2 runs (2 from before)" in result.output
        assert (resumed / "sweep.json").read_bytes() == (clean_sweep / "sweep.json").read_bytes()
        assert (resumed / "summary.json").read_text() == (clean_sweep / "summary.json").read_text()


def test_an_unknown_metric_lists_the_known_ones_and_keeps_the_runs(tmp_path: Path, clean_sweep: Path) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(clean_sweep, folder)
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(CLEAN.replace("mean_speed_mps", "mean_speed_mph"))
    before = tree(folder)
    fails(["sweep", str(sweep_file), "--out", str(folder)], "metrics: unknown metric 'mean_speed_mph'",
          "mean_speed_mps", "throughput_vph", "the runs are kept")  # fmt: skip
    assert tree(folder) == before
    # the name fixed: the same folder, nothing run again
    sweep_file.write_text(CLEAN)
    result = runner.invoke(app, ["sweep", str(sweep_file), "--out", str(folder)])
    assert result.exit_code == 0 and "2 runs (2 from before)" in result.output


def test_summaries_are_strict_json(clean_sweep: Path, run_dir: Path) -> None:
    """No NaN in summary.json: a 20 s run has no completed trip, so no mean delay (null)."""
    summary = load_json((clean_sweep / "summary.json").read_text(), "summary.json")
    assert [entry["runs"] for entry in summary] == [2]
    assert summary[0]["mean_delay_s"] is None and summary[0]["throughput_vph_ci95"] is not None
    run = load_json((run_dir / "summary.json").read_text(), "summary.json")
    assert run["metrics"]["mean_delay_s"] is None
    assert load_json((clean_sweep / "sweep.json").read_text(), "sweep.json")["seeds"] == 2


# ----------------------------------------------------------------------------- cavlab list


def test_list_fits_80_columns_with_whole_descriptions() -> None:
    done = cli("list", env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and not [line for line in lines if line != line.rstrip()]
    text = " ".join(done.stdout.split())
    assert "…" not in text
    for name in shipped_scenarios():
        s = load_scenario(name)
        if s.road.kind == "network":
            assert f"{name}: network {Path(s.road.network.file).name}, " in text
        else:
            assert f"{name}: {s.road.kind}, {s.road.lanes} lanes" in text
        assert " ".join(s.description.split()) in text
