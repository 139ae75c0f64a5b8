"""The cost model (cavlab.hw.profile): per-target energy tables, weight re-reads of the time-stepped spiking
step, savings against the baselines, the roofline's calibration and the RAPL hook, on known answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cavlab.errors import UserError
from cavlab.hw import profile
from cavlab.hw.profile import (
    ENERGY_TABLES,
    ON_CHIP_BYTES,
    calibrate,
    energy_entry,
    profile_model,
    rapl_energy_j,
)
from cavlab.hw.targets import get_target, targets

HIDDEN, OUT = 512, 18
STEP_MACS = HIDDEN * HIDDEN + HIDDEN * OUT + 2 * HIDDEN  # W₂, W₃ and the two β·v per step
ACCURACY = {"camera": 0.6, "lidar": 0.88, "radar": 0.7, "camera+lidar": 0.9, "camera+radar": 0.85,
            "lidar+radar": 0.927, "camera+lidar+radar": 0.925, "all branches": 0.92}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(perception_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared random-weight checkpoint with training results: 3 active steps, 80 % lidar+radar."""
    folder = tmp_path_factory.mktemp("costed")
    shutil.copy(perception_model_dir / "checkpoint.pt", folder / "checkpoint.pt")
    rows = {c: {"accuracy": a, "energy_pj": 1.0} for c, a in ACCURACY.items()}
    results = {
        "contexts": {"all": {**rows, "deep gate": {"accuracy": 0.92, "choices": {"lidar+radar": 80, "radar": 20}}}},
        "spiking": {"active_steps": 3, "contexts": {"all": {"rate_layer1": 0.2, "rate_layer2": 0.1}}},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_every_target_has_its_own_table_with_sources_and_cheaper_low_precisions() -> None:
    assert set(ENERGY_TABLES) == set(targets()) == set(ON_CHIP_BYTES)
    macs = {name: {p: e.mac_pj for p, e in table.items()} for name, table in ENERGY_TABLES.items()}
    assert len({tuple(sorted(m.items())) for m in macs.values()}) == 4  # no two targets share a table
    for name, table in ENERGY_TABLES.items():
        assert all(len(e.source) > 20 for e in table.values()), name
    for name in ("jetson-agx-orin", "jetson-orin-nano"):
        assert macs[name]["int8"] < macs[name]["fp16"] < macs[name]["fp32"]
    assert macs["jetson-agx-orin"]["dla-int8"] < macs["jetson-agx-orin"]["int8"]
    assert macs["x86-cpu"]["int8"] < macs["x86-cpu"]["fp32"]
    assert macs["zynq-zcu104"]["int8"] < macs["zynq-zcu104"]["fixed16"] < macs["zynq-zcu104"]["fixed24"]
    # device-level: the data sheet's power over its peak rate
    nano = ENERGY_TABLES["jetson-orin-nano"]["fp32"]
    assert nano.mac_pj == pytest.approx(25.0 / 1.04e12 * 1e12, rel=0.01)
    with pytest.raises(UserError, match=r"--precision fp16: x86-cpu has fp32, int8"):
        energy_entry(get_target("x86-cpu"), "fp16")


def test_known_answer_for_a_head_on_the_orin_nano(model_dir: Path) -> None:
    report = profile_model(model_dir, get_target("jetson-orin-nano"), measure=False, batch=32)
    head = report["components"]["head.radar"]
    macs = 64 * 512 + 512 * 512 + 512 * 18
    params = macs + 512 + 512 + 18
    assert head["energy_pj"] == pytest.approx(macs * 24.0 + (params * 4 / 32 + (64 + 18) * 4) * 20.0)
    assert head["energy_busy_pj"] == pytest.approx(25.0 * head["latency_roofline_s"]["1"] * 1e12)
    fp16 = profile_model(model_dir, get_target("jetson-orin-nano"), measure=False, batch=32, precision="fp16")
    assert fp16["components"]["head.radar"]["energy_pj"] == pytest.approx(
        macs * 3.0 + (params * 2 / 32 + (64 + 18) * 2) * 20.0
    )


def test_spiking_steps_run_dense_and_reread_their_weights_where_they_do_not_fit_on_chip(model_dir: Path) -> None:
    """The step's 1.09 MB of FP32 weights: above x86's 1 MiB L2 (read on each of the 3 active steps), within
    the Orin Nano's 2 MiB L2 (once per batch), in the FPGA's BRAM (never per frame)."""
    steps = {}
    for name in ("x86-cpu", "jetson-orin-nano", "zynq-zcu104"):
        steps[name] = profile_model(model_dir, get_target(name), measure=False, batch=8)["components"]["spiking.step"]
    assert [steps[n]["weight_reads"] for n in steps] == [3, 1, 0]
    x86 = steps["x86-cpu"]
    assert x86["macs"] == 3 * STEP_MACS
    assert x86["sops"] == pytest.approx(3 * (0.2 * HIDDEN * HIDDEN + 0.1 * HIDDEN * OUT))
    e = ENERGY_TABLES["x86-cpu"]["fp32"]
    assert x86["energy_pj"] == pytest.approx(
        3 * STEP_MACS * e.mac_pj + (3 * x86["weight_bytes"] / 8 + x86["activation_bytes"]) * e.dram_pj_per_byte
    )
    assert x86["activation_bytes"] == 3 * (3 * HIDDEN + OUT + 2 * HIDDEN) * 4  # z, v₁, v₂ in; y, v₁, v₂ out


def test_the_gate_is_compared_with_the_baselines_that_matter(model_dir: Path) -> None:
    report = profile_model(model_dir, get_target("jetson-agx-orin"), measure=False, batch=32)
    context = report["contexts"]["all"]
    versus = context["saving_vs"]
    assert {k: v["configuration"] for k, v in versus.items()} == {
        "all branches": "all branches", "three-sensor branch": "camera+lidar+radar",
        "best single configuration": "lidar+radar",
    }  # fmt: skip
    configs = report["configurations"]
    for row in versus.values():
        assert row["saving"] == pytest.approx(1 - context["energy_pj"] / configs[row["configuration"]]["energy_pj"])
        assert row["accuracy"] == ACCURACY[row["configuration"]]
    assert versus["all branches"]["saving"] > versus["three-sensor branch"]["saving"] > 0
    spiking = report["spiking"]
    assert spiking["spiking_energy_pj"] > spiking["event_driven_step_bound_pj"] > 0


def test_the_roofline_calibration_recovers_a_known_line() -> None:
    macs = np.array([1e3, 1e5, 3e5, 2e6, 8e6])
    fit = calibrate([(m, 20e-6 + m / 4e10) for m in macs])
    assert fit["t0_s"] == pytest.approx(20e-6) and fit["macs_per_s"] == pytest.approx(4e10)
    assert fit["median_relative_error"] < 1e-9 and fit["samples"] == 5


def test_measuring_on_x86_calibrates_and_says_what_rapl_gave(model_dir: Path, monkeypatch) -> None:
    measure = profile._measure
    monkeypatch.setattr(profile, "BATCHES", (1, 4))
    monkeypatch.setattr(profile, "_measure", lambda component, target: measure(component, target, runs=20))
    report = profile_model(model_dir, get_target("x86-cpu"), measure=True, batch=1)
    calibration = report["calibration"]
    assert calibration["samples"] == 2 * len(report["components"]) and calibration["macs_per_s"] > 0
    for c in report["components"].values():
        assert set(c["latency_calibrated_s"]) == {"1", "64"} and c["latency_calibrated_s"]["1"] > 0
        assert c["energy_busy_pj"] == pytest.approx(30.0 * c["latency_calibrated_s"]["1"] * 1e12)
    readable, _ = rapl_energy_j()
    assert report["rapl"]["readable"] == (readable is not None) and report["rapl"]["source"]


def test_rapl_is_read_where_the_powercap_tree_exists_and_named_where_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(profile, "RAPL_ROOT", tmp_path / "absent")
    energy, why = rapl_energy_j()
    assert energy is None and "no RAPL package domain" in why
    for name, microjoules in (("intel-rapl:0", 5_000_000), ("intel-rapl:1", 2_500_000), ("intel-rapl:0:0", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "energy_uj").write_text(f"{microjoules}\n")
    monkeypatch.setattr(profile, "RAPL_ROOT", tmp_path)
    energy, source = rapl_energy_j()
    assert energy == pytest.approx(7.5) and source == "intel-rapl:0, intel-rapl:1"  # packages, not sub-domains
    (tmp_path / "intel-rapl:1" / "energy_uj").unlink()
    energy, why = rapl_energy_j()
    assert energy is None and "No such file" in why


def test_fpga_latency_is_the_hls4ml_projects_analytic_one(model_dir: Path) -> None:
    from cavlab.hw.backends.hls4ml import LayerShape, analytic_latency_s

    zcu = get_target("zynq-zcu104")
    components = profile_model(model_dir, zcu, measure=False, batch=1)["components"]
    head = [LayerShape("0", "Dense", 64, 512), LayerShape("2", "Dense", 512, 512), LayerShape("4", "Dense", 512, 18)]
    expected = analytic_latency_s(head, zcu.resources, 24, 2.0e8)
    assert components["head.radar"]["latency_roofline_s"] == {
        "1": pytest.approx(expected),
        "64": pytest.approx(expected),
    }
    assert components["head.radar"]["weight_reads"] == 0  # the weights live in BRAM
    step = [LayerShape("w2", "Dense", HIDDEN, HIDDEN), LayerShape("w3", "Dense", HIDDEN, OUT),
            LayerShape("v1", "ApplyAlpha", HIDDEN, 1), LayerShape("v2", "ApplyAlpha", HIDDEN, 1)]  # fmt: skip
    per_step = analytic_latency_s(step, zcu.resources, 24, 2.0e8)
    assert components["spiking.step"]["latency_roofline_s"]["1"] == pytest.approx(3 * per_step)
    assert 1e-6 < expected < 2e-5  # µs: the reuse factors the DSP and BRAM budgets allow
