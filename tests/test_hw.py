"""Edge deployment: target profiles, ONNX export with explicit state, the checks, and ONNX Runtime parity."""

from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.errors import UserError
from cavlab.hw.backends.tensorrt import available as tensorrt_available
from cavlab.hw.backends.tensorrt import tensorrt_script
from cavlab.hw.export import Component, check, export_onnx, load_components, parity
from cavlab.hw.targets import get_target, targets
from cavlab.perception.fusion import CONFIGURATIONS
from cavlab.perception.sensors import sample_frames
from cavlab.perception.training import load_checkpoint

runner = CliRunner()


@pytest.fixture
def model_dir(perception_model_dir: Path) -> Path:
    return perception_model_dir


def test_target_profiles_load_with_their_sources() -> None:
    names = set(targets())
    assert {"x86-cpu", "jetson-agx-orin", "jetson-orin-nano", "zynq-zcu104"} <= names
    for target in targets().values():
        assert target.sources, target.name
        assert target.energy_pj["mac"] > target.energy_pj["ac"] > 0
    assert get_target("jetson-orin-nano").dla == {"count": 0, "precisions": []}  # no DLA on the Orin Nano
    with pytest.raises(UserError, match=r"unknown target 'tpu' \(available: jetson-agx-orin, jetson-orin-nano"):
        get_target("tpu")


def test_every_component_exports_and_matches_torch(model_dir: Path) -> None:
    target = get_target("x86-cpu")
    components = load_components(model_dir)
    assert [c.name for c in components][:3] == ["stem.camera", "stem.lidar", "stem.radar"]
    assert {"gate", "spiking.input", "spiking.step"} <= {c.name for c in components}
    for component in components:
        model = export_onnx(component, target)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["cavlab.component"] == component.name
        assert json.loads(props["state_pairs"]) == component.state_pairs
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        result = parity(model, component)
        assert set(result.per_batch) == {1, 7, 513}
        assert max(result.per_batch.values()) < 1e-4, (component.name, result)
        if component.state_pairs:
            assert result.rollout is not None and result.rollout < 1e-4
        else:
            assert result.rollout is None


def test_the_spiking_step_keeps_its_state_in_and_out(model_dir: Path) -> None:
    step = next(c for c in load_components(model_dir) if c.name == "spiking.step")
    model = export_onnx(step, get_target("jetson-agx-orin"))
    assert [i.name for i in model.graph.input] == ["z", "lif1.v_in", "lif2.v_in"]
    assert [o.name for o in model.graph.output] == ["y", "lif1.v_out", "lif2.v_out"]
    assert {n.op_type for n in model.graph.node} <= {"Gemm", "Mul", "Add", "Sub", "Greater", "Cast", "Identity"}


class ForgetsItsState(nn.Module):
    def forward(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x + 0 * v


def test_a_graph_that_drops_its_state_is_refused() -> None:
    component = Component("forgetful", ForgetsItsState(), (torch.rand(3, 4), torch.rand(3, 4)), ["x", "v_in"],
                          ["y", "v_out"], {"v_in": "v_out"})  # fmt: skip
    with pytest.raises(UserError, match=r"forgetful: the (state v_in → v_out was dropped|outputs do not depend)"):
        export_onnx(component, get_target("x86-cpu"))


def test_an_operator_the_target_cannot_run_is_named() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 2])
    graph = helper.make_graph([helper.make_node("DFT", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    component = Component("lmu.fft", nn.Identity(), (), ["x"], ["y"])
    check(model, get_target("x86-cpu"), component)  # ONNX Runtime on CPU runs DFT
    with pytest.raises(UserError, match=r"lmu\.fft: operator DFT cannot run on target jetson-orin-nano: no DFT in the"):
        check(model, get_target("jetson-orin-nano"), component)
    model.ir_version = 14
    with pytest.raises(UserError, match="IR version 14 is newer than target x86-cpu reads \\(13\\)"):
        check(model, get_target("x86-cpu"), component)


def write_dataset(folder: Path, shapes: dict[str, list[int]], frames: int = 96) -> Path:
    """A dataset directory in the format `cavlab perception dataset` writes, of synthetic frames
    (`sample_frames`): two contexts × two seeds (the test seed is the last)."""
    folder.mkdir()
    contexts, shards = ["clear-day", "fog-night"], []
    for k, label in enumerate(contexts):
        for seed in (0, 1):
            arrays = sample_frames(shapes, frames, 10 * k + seed)
            n = len(arrays["targets"])
            name = f"{label}-s{seed}.npz"
            np.savez(folder / name, **arrays, context=np.full(n, k, dtype=np.int16), time_s=np.zeros(n, np.float32))
            shards.append({"file": name, "context": label, "seed": seed, "samples": n})
    (folder / "manifest.json").write_text(json.dumps({"contexts": contexts, "shapes": shapes, "shards": shards}))
    return folder


def test_export_command_and_its_errors(model_dir: Path, tmp_path: Path) -> None:
    _, _, ckpt = load_checkpoint(model_dir)
    data = write_dataset(tmp_path / "data", ckpt["shapes"])
    out = tmp_path / "export"
    done = runner.invoke(app, ["export", str(model_dir), "--target", "jetson-orin-nano", "--data", str(data),
                               "--calibration-frames", "40", "--out", str(out)])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "slot accuracy on the 192 frames of the test seed" in done.output
    report = json.loads((out / "export.json").read_text())
    assert len(report["components"]) == 3 + 7 + 1 + 2
    assert all((out / r["file"]).stat().st_size > 0 for r in report["components"].values())
    # calibrated on 40 frames drawn from each context's training seed, checked on the test seed
    assert report["int8"]["frames"] == {"data": str(data), "frames_per_context": 40, "seed": 0,
                                        "calibration_frames": 80, "calibration_seeds": [0], "test_frames": 192,
                                        "test_seed": 1}  # fmt: skip
    accuracy = report["int8"]["accuracy"]
    assert set(accuracy) == {"clear-day", "fog-night", "all"}
    assert set(accuracy["all"]) == {*CONFIGURATIONS, "deep gate"}
    assert all(0 <= v <= 1 for row in accuracy.values() for r in row.values() for v in r.values())
    for name, r in report["components"].items():
        if r["state_pairs"] or name == "stem.radar":
            assert r["int8"] is None  # spiking membranes stay FP32; so does the radar stem (FP32_COMPONENTS)
            assert (r["fp32_only"] is None) == bool(r["state_pairs"]), name
            continue
        assert 0 <= r["int8"]["rms_error"] <= r["int8"]["max_abs_error"] and r["int8"]["output_spread"] > 0, name
        assert_int8_graph_as_tensorrt_takes_it(out, r)
    script = (out / "tensorrt.sh").read_text()
    assert_tensorrt_script(script, out, report["components"], dla=False)
    assert_tensorrt_script(tensorrt_script(report["components"], get_target("jetson-agx-orin")), out,
                           report["components"], dla=True)  # fmt: skip
    onnx.checker.check_model(onnx.load(out / "spiking.step.onnx"))
    plain = tmp_path / "plain"
    done = runner.invoke(app, ["export", str(model_dir), "--target", "x86-cpu", "--out", str(plain)])
    assert done.exit_code == 0 and "give --data" in " ".join(done.output.split()), done.output
    report = json.loads((plain / "export.json").read_text())
    assert report["int8"] is None and all(r["int8"] is None for r in report["components"].values())
    assert not list(plain.glob("*.int8.*")) and not (plain / "tensorrt.sh").exists()  # no TensorRT on x86-cpu
    other = write_dataset(tmp_path / "other", {**ckpt["shapes"], "camera": [2, 3, 16]})
    for args, message in [
        (["export", str(model_dir), "--target", "tpu"], "unknown target 'tpu'"),
        (["export", str(tmp_path / "none"), "--target", "x86-cpu"], "no checkpoint.pt"),
        (["export", str(model_dir), "--target", "x86-cpu", "--data", str(tmp_path / "none")], "no manifest.json"),
        (["export", str(model_dir), "--target", "x86-cpu", "--data", str(other)], "differ from the model's"),
        (
            ["export", str(model_dir), "--target", "x86-cpu", "--data", str(data), "--calibration-frames", "0"],
            "--calibration-frames is 0; at least 1",
        ),
    ]:
        done = runner.invoke(app, [*args, "--out", str(tmp_path / "bad")])
        assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
        assert "Traceback" not in done.output and not (tmp_path / "bad").exists()


def assert_tensorrt_script(script: str, folder: Path, report: dict, dla: bool) -> None:
    """Per component a trtexec build per precision (INT8 from its cache, the FP32 layers pinned; none for the
    stateful spiking step), each with the batch profile 1/32/256 on every input and its per-layer profile
    exported, on DLA core 0 too where the target has DLAs (FP16 and INT8); Polygraphy's FP32 and FP16
    comparisons with ONNX Runtime. Every file named exists in the export."""
    commands = [shlex.split(line) for line in script.splitlines() if line.startswith(("trtexec", "polygraphy"))]
    for name, entry in report.items():
        builds = [c for c in commands if c[0] == "trtexec" and c[1] == f"--onnx={entry['file']}"]
        precisions = ["fp32", "fp16", *(["int8"] if entry["int8"] else [])]
        expected = {f"{name}.{p}.plan" for p in precisions}
        if dla:
            expected |= {f"{name}.{p}.dla0.plan" for p in precisions if p != "fp32"}
        assert {c[2].removeprefix("--saveEngine=") for c in builds} == expected, name
        for c in builds:
            args = dict(a.removeprefix("--").split("=", 1) for a in c[1:] if "=" in a)
            for kind, batch in (("min", 1), ("opt", 32), ("max", 256)):
                want = ",".join(f"{i}:{'x'.join(map(str, [batch, *shape]))}" for i, shape in entry["inputs"].items())
                assert args[f"{kind}Shapes"] == want, (name, kind)
            plan = args["saveEngine"].removesuffix(".plan")
            assert args["exportProfile"] == f"{plan}.profile.json" and "--separateProfileRun" in c, name
            assert ("--fp16" in c) == (".fp16" in plan) and ("--int8" in c) == (".int8" in plan), name
            assert ("--useDLACore=0" in c) == (".dla0" in plan), name
            if "--int8" in c:
                assert args["calib"] == entry["int8"]["cache"] and (folder / args["calib"]).exists(), name
                pinned = ",".join(f"{n}:fp32" for n in entry["int8"]["fp32_layers"])
                assert args.get("layerPrecisions", "") == pinned, name
        checks = [c for c in commands if c[0] == "polygraphy" and c[2] == entry["file"]]
        assert len(checks) == 2 and sum("--fp16" in c for c in checks) == 1, name
        assert all("--trt" in c and "--onnxrt" in c for c in checks), name
        assert (folder / entry["file"]).exists(), name


def assert_int8_graph_as_tensorrt_takes_it(folder: Path, entry: dict) -> None:
    """The QDQ graph: symmetric (every zero point 0, as TensorRT requires), weights per channel, the layer
    writing the output (`fp32_layers`) FP32; its calibration cache (TensorRT's text format: the version
    header, then per tensor the scale amax/127 as big-endian float32 hex) holds the same activation scales."""
    model = onnx.load(folder / entry["int8"]["file"])
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(not values[n.input[2]].any() for n in quantize if len(n.input) > 2), entry["file"]
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and values[n.input[1]].ndim == 1]
    assert per_channel, entry["file"]
    fp32 = [n for n in model.graph.node if n.name in entry["int8"]["fp32_layers"]]
    regression = entry["file"].startswith(("head.", "gate"))  # the others' outputs are features, not estimates
    assert len(fp32) == len(entry["int8"]["fp32_layers"]) == regression, entry["file"]
    assert all(not i.endswith("DequantizeLinear_Output") for n in fp32 for i in n.input), entry["file"]
    lines = (folder / entry["int8"]["cache"]).read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"  # TensorRT 10.3 (the target's runtime_version)
    cache = {}
    for line in lines[1:]:
        name, value = line.rsplit(": ", 1)
        cache[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    activations = [n for n in quantize if n.input[0] not in values]
    for n in activations:
        assert cache[n.input[0]] == pytest.approx(float(values[n.input[1]]), rel=1e-6), (entry["file"], n.input[0])


def test_profile_known_answers_and_reconfiguration(model_dir: Path, tmp_path: Path) -> None:
    from cavlab.hw.profile import profile_model

    nano = get_target("jetson-orin-nano")
    report = profile_model(model_dir, nano, measure=False, batch=32)
    head = report["components"]["head.radar"]
    # 64·512 + 512·512 + 512·18 MACs; 338k FP32 parameters read once per 32 frames, 64 in + 18 out values
    macs = 64 * 512 + 512 * 512 + 512 * 18
    assert head["macs"] == macs and head["sops"] == 0 and head["latency_measured_s"] is None
    params = macs + 512 + 512 + 18
    expected = macs * 24.0 + (params * 4 / 32 + (64 + 18) * 4) * 20.0  # the Orin Nano's FP32 table
    assert head["energy_pj"] == pytest.approx(expected)
    assert head["latency_roofline_s"]["1"] == pytest.approx(max(macs / 1.04e12, (params * 4 + 82 * 4) / 1.02e11))
    step = report["components"]["spiking.step"]
    assert step["state_bytes"] == 2 * 512 * 4 and step["macs"] == 0
    radar = report["configurations"]["radar"]
    assert radar["components"] == ["stem.radar", "head.radar"]
    assert radar["energy_pj"] == pytest.approx(report["components"]["stem.radar"]["energy_pj"] + head["energy_pj"])
    assert "contexts" not in report  # no training results beside this checkpoint
    results = {
        "contexts": {"fog-day": {"deep gate": {"accuracy": 0.9, "choices": {"radar": 3, "lidar": 1}}}},
        "spiking": {"active_steps": 3, "contexts": {"all": {"rate_layer1": 0.2, "rate_layer2": 0.1}}},
    }
    (model_dir / "results.json").write_text(json.dumps(results))
    try:
        report = profile_model(model_dir, nano, measure=False)
    finally:
        (model_dir / "results.json").unlink()
    fog = report["contexts"]["fog-day"]
    assert fog["sensor_off_share"] == {"camera": 1.0, "lidar": 0.75, "radar": 0.25}
    c = report["components"]
    gate = c["gate"]["energy_pj"] + c["stem.radar"]["energy_pj"]
    radar_only = report["configurations"]["radar"]["energy_pj"] - c["stem.radar"]["energy_pj"]
    assert fog["energy_pj"] == pytest.approx(
        (3 * radar_only + report["configurations"]["lidar"]["energy_pj"]) / 4 + gate
    )
    assert report["components"]["spiking.step"]["sops"] == pytest.approx(3 * (0.2 * 512 * 512 + 0.1 * 512 * 18))
    done = runner.invoke(app, ["profile", str(model_dir), "--target", "x86-cpu", "--out", str(tmp_path / "p")])
    assert done.exit_code == 0, done.output
    measured = json.loads((tmp_path / "p" / "profile.json").read_text())["components"]["gate"]["latency_measured_s"]
    assert set(measured) == {"1", "8", "64"} and all(0 < v["p50"] <= v["p99"] for v in measured.values())


@pytest.mark.skipif(not tensorrt_available(), reason="needs TensorRT and a CUDA GPU (a Jetson or a workstation)")
def test_tensorrt_engines_match_onnx_runtime(model_dir: Path, tmp_path: Path) -> None:
    """FP32 and FP16 engines against ONNX Runtime, their per-layer times; the INT8 engine from the calibration
    cache against the INT8 QDQ graph on ONNX Runtime; the spiking state carried across two frames per
    vehicle (`run_spiking`) against the ONNX Runtime rollout."""
    import onnxruntime as ort

    from cavlab.hw.backends.tensorrt import TrtEngine, build_engine, run_spiking
    from cavlab.hw.export import export_model, int8_frames
    from cavlab.perception.inference import StateTable

    _, _, ckpt = load_checkpoint(model_dir)
    frames = int8_frames(write_dataset(tmp_path / "data", ckpt["shapes"]), ckpt["shapes"])
    report = export_model(model_dir, get_target("jetson-agx-orin"), tmp_path, frames)["components"]

    def session(file: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(tmp_path / file), providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(0)
    for name in ("head.lidar+radar", "spiking.step"):
        entry = report[name]
        onnx_session = session(entry["file"])
        feeds = {i.name: torch.rand(7, *i.shape[1:], generator=gen) for i in onnx_session.get_inputs()}
        expected = onnx_session.run(None, {k: v.numpy() for k, v in feeds.items()})
        for precision, tolerance in (("fp32", 1e-3), ("fp16", 5e-2)):
            engine = TrtEngine(build_engine(tmp_path / entry["file"], precision=precision))
            got = engine.run({k: v.cuda() for k, v in feeds.items()})
            for output, want in zip(onnx_session.get_outputs(), expected, strict=True):
                error = float((got[output.name].cpu() - torch.from_numpy(want)).abs().max())
                assert error < tolerance * max(1.0, float(np.abs(want).max())), (name, precision, error)
            times = engine.layer_times({k: v.cuda() for k, v in feeds.items()}, runs=10)
            assert times and all(t > 0 for t in times.values()), (name, precision)
    entry = report["head.lidar+radar"]
    head = next(c for c in load_components(model_dir) if c.name == "head.lidar+radar")
    head_inputs = head.representative(frames.test)[0]
    int8 = TrtEngine(build_engine(tmp_path / entry["file"], precision="int8",
                                  calibration_cache=tmp_path / entry["int8"]["cache"],
                                  fp32_layers=tuple(entry["int8"]["fp32_layers"])))  # fmt: skip
    got = int8.run({"features": head_inputs.cuda()})["slots"].cpu().numpy()
    want = session(entry["int8"]["file"]).run(None, {"features": head_inputs.numpy()})[0]
    assert float(np.sqrt(np.mean((got - want) ** 2))) < 2 * entry["int8"]["rms_error"] + 1e-3
    step = report["spiking.step"]
    engines = {n: TrtEngine(build_engine(tmp_path / report[n]["file"])) for n in ("spiking.input", "spiking.step")}
    table = StateTable({name: tuple(shape) for name, shape in step["inputs"].items() if name in step["state_pairs"]})
    x = {n: session(report[n]["file"]) for n in ("spiking.input", "spiking.step")}
    state = {name: np.zeros((3, *shape), np.float32) for name, shape in table.shapes.items()}
    for _ in range(2):  # two frames of the same three vehicles: the membranes carry over
        f = torch.rand(3, *report["spiking.input"]["inputs"]["features"], generator=gen)
        y = run_spiking(engines["spiking.input"], engines["spiking.step"], f.cuda(), ["a", "b", "c"], table,
                        step["state_pairs"], active_steps=3)  # fmt: skip
        z = x["spiking.input"].run(None, {"features": f.numpy()})[0]
        total = 0
        for _ in range(3):
            out = dict(zip([o.name for o in x["spiking.step"].get_outputs()],
                           x["spiking.step"].run(None, {"z": z, **state}), strict=True))  # fmt: skip
            total = total + out["y"]
            state = {i: out[o] for i, o in step["state_pairs"].items()}
        assert float(np.abs(y.cpu().numpy() - total / 3).max()) < 1e-3
