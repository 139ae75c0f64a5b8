"""The FPGA flavour (hls4ml): conversion, C simulation (g++) and parity with torch.

Tolerances. At fixed<16,6,RND,SAT> the LSB is 2^-10; every weight, bias and layer output is
rounded by at most ½ LSB, and the weight errors of a layer add up like a random walk over its
fan-in (≈ √512·2^-11 ≈ 0.01 for O(1) inputs): 0.02 for the MLPs and the stem (measured
about 0.003; truncation instead of rounding gives 0.05–0.08 and fails). At fixed<24,8,RND,SAT>
(LSB 2^-16) a fan-in of 64 gives at most 64·2^-17 ≈ 5e-4: 1e-3 for the spiking graphs, whose
membranes must then stay more than 1e-3 away from ϑ for the spikes to agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

pytest.importorskip("hls4ml")
pytest.importorskip("qonnx")

from cavlab.errors import UserError
from cavlab.hw.backends.hls4ml import (
    QONNX_DOMAIN,
    RESOURCE_SHARE,
    LayerShape,
    LIFStep,
    csim_parity,
    export_fpga,
    fpga_onnx,
    hls_model,
    plan_reuse,
    predict,
    resource_estimate,
    valid_reuse_factors,
)
from cavlab.hw.export import SpikingInput, SpikingStep, load_components
from cavlab.hw.targets import get_target
from cavlab.perception.fusion import FEATURES, BranchHead, DeepGate, GridStem
from cavlab.perception.sensors import sample_frames
from cavlab.perception.spiking import LIF, lif_step
from cavlab.perception.spiking_branch import SpikingHead

from .conftest import PERCEPTION_SHAPES

# hls4ml keeps the β·v scaling of a LIF as its own layer instead of moving it below the Add; harmless
pytestmark = pytest.mark.filterwarnings("ignore:Failed to propagate quantization bias:UserWarning")

MLP_TOL = 0.02
SPIKING_TOL = 1e-3
LIF_PRECISION = "fixed<24,8,RND,SAT>"
HEAD_PRECISION = "fixed<24,10,RND,SAT>"  # export_fpga's default
ZCU104 = get_target("zynq-zcu104").resources


def test_branch_head_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = BranchHead(stems=2)  # the real size: 128 → 512 → 512 → 18
    model = fpga_onnx(head, torch.rand(1, 2 * FEATURES))
    assert {n.op_type for n in model.graph.node} == {"MatMul", "Add", "Relu", "Reshape"}
    hls = hls_model(model, tmp_path / "head", precision=HEAD_PRECISION)
    assert csim_parity(head, hls, (torch.rand(64, 2 * FEATURES),)) < MLP_TOL
    # the project as planned for the ZCU104: Resource strategy, reuse factors from the DSP budget
    assert hls.config.config["HLSConfig"]["Model"]["Strategy"] == "Resource"
    estimate = resource_estimate(hls, model, HEAD_PRECISION)
    assert estimate["io_type"] == "io_parallel" and estimate["fits"], estimate["total"]
    big = next(r for r in estimate["layers"] if (r["n_in"], r["n_out"]) == (512, 512))
    # 262,144 multiplications at 2 DSPs each within 80 % of 1,728 DSPs: R ≥ 380, a divisor or multiple of 512
    assert big["reuse_factor"] >= 380 and big["reuse_factor"] % 512 == 0 and big["multipliers"] <= 690
    assert estimate["total"]["dsp"] <= RESOURCE_SHARE * ZCU104["dsp"]


def test_gate_network_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = DeepGate().net  # the statistics are computed on the host: 64 + 12 features in
    hls = hls_model(fpga_onnx(net, torch.rand(1, 76)), tmp_path / "gate")
    assert csim_parity(net, hls, (torch.rand(64, 76),)) < MLP_TOL


def test_grid_stem_matches_torch_with_nchw_input(tmp_path: Path) -> None:
    torch.manual_seed(2)
    stem = GridStem(24)  # the camera's 24 cells
    model = fpga_onnx(stem, torch.rand(1, 2, 3, 24))
    assert [n.op_type for n in model.graph.node][:2] == ["Transpose", "Conv"]  # qonnx turns NCHW to NHWC inside
    hls = hls_model(model, tmp_path / "stem")
    assert csim_parity(stem, hls, (torch.rand(32, 2, 3, 24),)) < MLP_TOL
    estimate = resource_estimate(hls, model, "fixed<16,6,RND,SAT>")
    assert estimate["io_type"] == "io_stream" and estimate["fits"]  # convolutions stream
    assert [r["kind"] for r in estimate["layers"]] == ["Conv2D", "Conv2D", "Dense"]


@pytest.fixture(scope="module")
def lif_model(tmp_path_factory: pytest.TempPathFactory):
    """A LIF step (16 → 32, β = 0.9, ϑ = 1) and its compiled C simulation."""
    torch.manual_seed(3)
    step = LIFStep(nn.Linear(16, 32), LIF(0.9, 1.0))
    model = fpga_onnx(step, (torch.rand(1, 16), torch.rand(1, 32)))
    return step, hls_model(model, tmp_path_factory.mktemp("lif"), precision=LIF_PRECISION)


def test_spikes_become_a_one_bit_quant() -> None:
    step = LIFStep(nn.Linear(4, 8), LIF(0.9, 1.0))
    model = fpga_onnx(step, (torch.rand(1, 4), torch.rand(1, 8)))
    ops = [n.op_type for n in model.graph.node]
    assert "Greater" not in ops and "Cast" not in ops
    (quant,) = [n for n in model.graph.node if n.op_type == "Quant"]
    assert quant.domain == QONNX_DOMAIN
    assert {a.name: helper.get_attribute_value(a) for a in quant.attribute} == {
        "signed": 0, "narrow": 0, "rounding_mode": b"FLOOR",
    }  # fmt: skip
    with pytest.raises(UserError, match=r"fixed<16,6> has 10 fractional bits; the spikes of this graph need 16"):
        hls_model(model, Path("unused"), precision="fixed<16,6>")


def test_lif_spikes_match_away_from_threshold(lif_model) -> None:
    step, hls = lif_model
    gen = torch.Generator().manual_seed(4)
    x, v = torch.rand(256, 16, generator=gen), torch.rand(256, 32, generator=gen) * 1.5
    with torch.no_grad():
        v_pre = 0.9 * v + step.linear(x)
        spikes, v_new = step(x, v)
    away = ((v_pre - 1.0).abs() > SPIKING_TOL).all(dim=1)
    assert away.sum() > 200 and 0.1 < spikes.mean() < 0.9
    s_hls, v_hls = predict(hls, (x[away], v[away]))
    np.testing.assert_array_equal(s_hls, spikes[away].numpy())
    assert np.abs(v_hls - v_new[away].numpy()).max() < SPIKING_TOL


def test_lif_rollout_is_bit_exact_on_the_grid(tmp_path: Path) -> None:
    """β = ½, weights on 2^-4 and inputs on 2^-2: after K = 8 steps the membrane needs 14
    fractional bits, so fixed<24,8> is exact, and v' = ϑ happens (strict >: no spike)."""
    gen = torch.Generator().manual_seed(5)
    step = LIFStep(nn.Linear(16, 32), LIF(0.5, 1.0))
    with torch.no_grad():
        step.linear.weight.copy_(torch.randint(-4, 5, (32, 16), generator=gen) / 16)
        step.linear.bias.copy_(torch.randint(-4, 5, (32,), generator=gen) / 16)
    hls = hls_model(fpga_onnx(step, (torch.rand(1, 16), torch.rand(1, 32))), tmp_path, precision=LIF_PRECISION)
    v_torch = v_hls = torch.zeros(64, 32)
    at_threshold = 0
    for _ in range(8):
        x = torch.randint(0, 5, (64, 16), generator=gen) / 4
        with torch.no_grad():
            drive = step.linear(x)
        at_threshold += int((0.5 * v_torch + drive == 1.0).sum())
        s_torch, v_torch = lif_step(drive, v_torch, 0.5, 1.0)
        s_hls, v_next = predict(hls, (x, v_hls))
        np.testing.assert_array_equal(s_hls, s_torch.numpy())
        np.testing.assert_array_equal(v_next, v_torch.numpy())
        v_hls = torch.from_numpy(v_next)
    assert at_threshold > 0


def test_spiking_step_matches_torch(tmp_path: Path) -> None:
    """The spiking head's step (z, v₁, v₂) → (W₃·s², v₁', v₂'), rows whose membranes stay away from ϑ."""
    torch.manual_seed(6)
    head = SpikingHead(1, hidden=64).eval()
    step = SpikingStep(head)
    h = head.w1.out_features
    hls = hls_model(fpga_onnx(step, (torch.rand(1, h),) * 3), tmp_path, precision=LIF_PRECISION)
    z, v1, v2 = torch.rand(256, h) * 2, torch.rand(256, h), torch.rand(256, h)
    with torch.no_grad():
        v1_pre = 0.9 * v1 + z
        v2_pre = 0.9 * v2 + head.w2((v1_pre > 1).float())
    away = (((v1_pre - 1).abs() > SPIKING_TOL) & ((v2_pre - 1).abs() > SPIKING_TOL)).all(dim=1)
    assert away.sum() > 100
    assert csim_parity(step, hls, (z[away], v1[away], v2[away])) < SPIKING_TOL


def test_greater_is_rejected_by_name(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Greater", ["x", "theta"], ["above"])], "threshold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("above", TensorProto.BOOL, [1, 4])],
        [helper.make_tensor("theta", TensorProto.FLOAT, [], [1.0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UserError, match=r"cannot convert operator Greater \(Greater: no comparison in hls4ml"):
        hls_model(model, tmp_path)


def test_a_comparison_that_is_not_a_spike_is_rejected() -> None:
    class Clip(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x > 0.5, x, torch.zeros_like(x))

    with pytest.raises(UserError, match=r"cannot convert operator Greater, Where"):
        fpga_onnx(Clip(), torch.rand(1, 4))


def test_export_fpga_converts_what_it_can_and_keeps_the_radar_stem_on_the_host(
    tmp_path: Path, perception_model_dir: Path
) -> None:
    out = tmp_path / "staging"
    out.mkdir()
    final = tmp_path / "export"
    frames = sample_frames(PERCEPTION_SHAPES, 40, 0)  # the simulated sensors' frames, as a dataset holds them
    report = export_fpga(perception_model_dir, out, only=["stem.radar", "head.radar", "gate", "spiking.step"],
                         batch=12, frames=frames, final_dir=final)  # fmt: skip
    assert report["stem.radar"]["runs_on"] == "host"
    assert "Slice" in report["stem.radar"]["reason"] and "ReduceMax" in report["stem.radar"]["reason"]
    for name in ("head.radar", "gate", "spiking.step"):
        r = report[name]
        assert r["runs_on"] == "fpga" and r["inputs"] == "dataset frames" and r["resources"]["fits"], r
        assert "Gemm" not in r["operators"] and (out / r["file"]).exists()
        project = out / r["project"]
        assert (project / "firmware").is_dir()  # the hls4ml project, ready for synthesis
        config = (project / "hls4ml_config.yml").read_text()
        assert f"OutputDir: {final / r['project']}" in config and str(out) not in config
        x = np.loadtxt(project / "tb_data" / "tb_input_features.dat", ndmin=2)
        y = np.loadtxt(project / "tb_data" / "tb_output_predictions.dat", ndmin=2)
        assert len(x) == len(y) == 12 and np.isfinite(x).all() and x.std() > 0
    assert report["head.radar"]["csim_max_abs_error"] < MLP_TOL and report["gate"]["csim_max_abs_error"] < MLP_TOL
    # the tb_data predictions are torch's outputs on those inputs
    head = out / report["head.radar"]["project"] / "tb_data"
    x = np.loadtxt(head / "tb_input_features.dat", ndmin=2).astype(np.float32)
    module = next(c.module for c in load_components(perception_model_dir) if c.name == "head.radar")
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).reshape(len(x), -1).numpy()
    np.testing.assert_allclose(np.loadtxt(head / "tb_output_predictions.dat", ndmin=2), expected, rtol=1e-5, atol=1e-5)


def test_valid_reuse_factors_are_hls4ml_s() -> None:
    import hls4ml

    backend = hls4ml.backends.get_backend("Vitis")
    for n_in, n_out in ((128, 512), (512, 18), (18, 16), (76, 64), (1440, 64), (512, 1)):
        assert valid_reuse_factors(n_in, n_out) == backend.get_valid_reuse_factors(n_in, n_out)


def test_reuse_factors_follow_the_dsp_budget_per_layer() -> None:
    """R_l ∝ √(M_l / P_l): a convolution's many pixels get a small R, the big dense layer a large one; a
    device too small for even the largest reuse factors is reported, not hidden."""
    shapes = [LayerShape("conv", "Conv2D", 144, 16, pixels=180), LayerShape("dense", "Dense", 1440, 64)]
    reuse = plan_reuse(shapes, ZCU104, bits=24)
    assert reuse["conv"] < reuse["dense"]
    for s in shapes:
        assert reuse[s.node] in valid_reuse_factors(s.n_in, s.n_out)
    dsp = sum(2 * s.multiplications // reuse[s.node] for s in shapes)
    assert dsp <= RESOURCE_SHARE * ZCU104["dsp"]
    tiny = {"dsp": 4, "bram_36k": 1, "lut": 100}
    assert plan_reuse(shapes, tiny, bits=24) == {"conv": 144 * 16, "dense": 1440 * 64}  # the largest: still too big


@pytest.mark.parametrize(
    ("name", "module", "inputs", "precision"),
    [
        ("head, three stems", BranchHead(stems=3), (torch.rand(1, 3 * FEATURES),), HEAD_PRECISION),
        ("lidar stem", GridStem(60), (torch.rand(1, 2, 3, 60),), HEAD_PRECISION),
        ("gate network", DeepGate().net, (torch.rand(1, 76),), HEAD_PRECISION),
        ("spiking input", SpikingInput(SpikingHead(2)), (torch.rand(1, 2 * FEATURES),), HEAD_PRECISION),
        ("spiking step", SpikingStep(SpikingHead(2).eval()), (torch.rand(1, 512),) * 3, LIF_PRECISION),
    ],
)
def test_real_size_projects_fit_the_zcu104(
    tmp_path: Path, name: str, module: nn.Module, inputs, precision: str
) -> None:
    model = fpga_onnx(module, inputs)
    hls = hls_model(model, tmp_path / "project", precision=precision, compile_csim=False)
    estimate = resource_estimate(hls, model, precision)
    assert estimate["fits"], (name, estimate["total"])
    assert estimate["total"]["dsp"] <= RESOURCE_SHARE * ZCU104["dsp"]
    assert estimate["total"]["bram_18k"] <= RESOURCE_SHARE * 2 * ZCU104["bram_36k"]
    assert 0 < estimate["total"]["latency_s"] < 1e-4  # tens of µs at most at 200 MHz
    assert "analytic" in estimate["method"]
