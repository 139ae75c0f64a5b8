"""Run directories appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.errors import SimulationError
from cavlab.runs.rundir import staged_run_dir
from cavlab.sim import engine


def test_staged_directory_is_renamed_into_place_on_success(tmp_path: Path) -> None:
    final = tmp_path / "a" / "run"
    with staged_run_dir(final) as staging:
        assert staging.parent == final.parent and staging.name.startswith(".run.partial-")
        (staging / "summary.json").write_text("{}")
        assert not final.exists()
    assert (final / "summary.json").is_file()
    assert [p.name for p in final.parent.iterdir()] == ["run"]


def test_an_empty_existing_directory_may_be_used(tmp_path: Path) -> None:
    final = tmp_path / "run"
    final.mkdir()
    with staged_run_dir(final) as staging:
        (staging / "x").write_text("1")
    assert (final / "x").is_file()


def test_failure_removes_everything(tmp_path: Path) -> None:
    final = tmp_path / "run"
    with pytest.raises(ValueError), staged_run_dir(final) as staging:
        (staging / "trajectories.parquet").write_text("half")
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_sumo_failure_mid_run_exits_1_and_leaves_no_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_run(self, *args, **kwargs):
        (self.workdir / "partial.txt").write_text("half a run")
        raise SimulationError("SUMO failed during the step: connection closed by SUMO")

    monkeypatch.setattr(engine.Engine, "run", broken_run)
    result = CliRunner().invoke(app, ["run", "lane-drop", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "SUMO error: SUMO failed during the step" in result.output
    assert list(tmp_path.iterdir()) == []
