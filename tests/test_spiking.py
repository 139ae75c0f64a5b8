"""Spiking neurons, LMU, time-step mask and accounting against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cavlab.hw.export import SpikingStep
from cavlab.perception.fusion import FusionModel, estimates
from cavlab.perception.spiking import (
    ENERGY_PJ,
    LIF,
    CubaLIF,
    CubaState,
    LMUCell,
    SpikeMonitor,
    SpikingLMUCell,
    SpikingLMUState,
    TimeStepMask,
    cuba_init,
    cuba_lif_step,
    discretize_zoh,
    energy_pj,
    firing_rate,
    legendre_readout,
    lif_init,
    lif_sequence,
    lif_step,
    linear_macs,
    lmu_convolution,
    lmu_fft,
    lmu_impulse_response,
    lmu_matrices,
    lmu_recurrent,
    synaptic_ops,
)
from cavlab.perception.spiking_branch import SpikingHead, SpikingStream

from .conftest import PERCEPTION_SHAPES

F64 = torch.float64


# --- LIF ------------------------------------------------------------------------------------


def test_lif_golden_trace() -> None:
    # β = 0.8, ϑ = 1, x = 0.3, v0 = 0, by hand (v' = 0.8·v + 0.3):
    #   v'1 = 0.3, v'2 = 0.54, v'3 = 0.732, v'4 = 0.8856, v'5 = 1.00848 > 1 → spike, v5 = 0.00848
    #   v'6 = 0.006784 + 0.3 = 0.306784, v'7 = 0.2454272 + 0.3 = 0.5454272, v'8 = 0.43634176 + 0.3 = 0.73634176
    expected_v = [0.3, 0.54, 0.732, 0.8856, 0.00848, 0.306784, 0.5454272, 0.73634176]
    expected_s = [0, 0, 0, 0, 1, 0, 0, 0]
    x = torch.tensor(0.3, dtype=F64)
    v = lif_init(x)
    for s_expected, v_expected in zip(expected_s, expected_v, strict=True):
        s, v = lif_step(x, v, beta=0.8, theta=1.0)
        assert s.item() == s_expected
        assert v.item() == pytest.approx(v_expected, abs=1e-12)


def test_lif_sequence_matches_golden_trace() -> None:
    spikes, v_final = lif_sequence(torch.full((8, 1), 0.3, dtype=F64), beta=0.8, theta=1.0)
    assert spikes[:, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert v_final.item() == pytest.approx(0.73634176, abs=1e-12)


def test_lif_threshold_is_strict() -> None:
    # v' = 0.5·1.0 + 0.5 = 1.0 = ϑ exactly (all values exact in binary): no spike, no reset.
    for requires_grad in (False, True):  # inference and surrogate paths
        s, v = lif_step(torch.tensor(0.5, requires_grad=requires_grad), torch.tensor(1.0), beta=0.5, theta=1.0)
        assert s.item() == 0.0
        assert v.item() == 1.0
    # One ulp above the threshold spikes and subtracts ϑ.
    s, v = lif_step(torch.tensor(np.nextafter(1.0, 2.0), dtype=F64), torch.tensor(0.0, dtype=F64), 0.5, 1.0)
    assert s.item() == 1.0
    assert 0 < v.item() < 1e-15


def test_lif_broadcasts_parameters_over_batch() -> None:
    # x = 0.8 for 2 samples × 3 neurons, β = [0.5, 0.5, 0.0], ϑ = [0.5, 1.0, 2.0] per neuron:
    #   step 1: v' = [0.8, 0.8, 0.8] → s = [1, 0, 0], v = [0.3, 0.8, 0.8]
    #   step 2: v' = [0.15 + 0.8, 0.4 + 0.8, 0 + 0.8] = [0.95, 1.2, 0.8] → s = [1, 1, 0], v = [0.45, 0.2, 0.8]
    x = torch.full((2, 3), 0.8, dtype=F64)
    beta = torch.tensor([0.5, 0.5, 0.0], dtype=F64)
    theta = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    s1, v = lif_step(x, lif_init(x), beta, theta)
    s2, v = lif_step(x, v, beta, theta)
    assert s1.tolist() == [[1, 0, 0]] * 2
    assert s2.tolist() == [[1, 1, 0]] * 2
    torch.testing.assert_close(v, torch.tensor([[0.45, 0.2, 0.8]] * 2, dtype=F64))


def test_lif_module_holds_parameters_not_state() -> None:
    lif = LIF(beta=0.8, theta=1.0)
    assert not list(lif.parameters())
    assert {name for name, _ in lif.named_buffers()} == {"beta", "theta"}
    x = torch.full((3,), 0.3)
    s, v = lif(x)
    s, v = lif(x, v)  # same input, same state → same output: nothing is kept between calls
    s_again, v_again = lif(x, torch.full((3,), 0.3))
    assert torch.equal(s, s_again) and torch.equal(v, v_again)
    torch.testing.assert_close(v, torch.full((3,), 0.54))
    learnable = LIF(beta=0.8, theta=1.0, learnable=True)
    assert {name for name, _ in learnable.named_parameters()} == {"beta", "theta"}


# --- CuBa LIF -------------------------------------------------------------------------------


def test_cuba_golden_trace() -> None:
    # α = 0.5, β = 0.9, ϑ = 1, x = [1, 0.5, 0, 0, 0], by hand:
    #   t1: i = 1.0,  v' = 0 + 1.0 = 1.0 (= ϑ, no spike),   v = 1.0
    #   t2: i = 0.5 + 0.5 = 1.0, v' = 0.9 + 1.0 = 1.9 → spike, v = 0.9
    #   t3: i = 0.5,  v' = 0.81 + 0.5 = 1.31 → spike,       v = 0.31
    #   t4: i = 0.25, v' = 0.279 + 0.25 = 0.529,            v = 0.529
    #   t5: i = 0.125, v' = 0.4761 + 0.125 = 0.6011,        v = 0.6011
    inputs = [1.0, 0.5, 0.0, 0.0, 0.0]
    expected = [(0, 1.0, 1.0), (1, 1.0, 0.9), (1, 0.5, 0.31), (0, 0.25, 0.529), (0, 0.125, 0.6011)]
    state = cuba_init(torch.tensor(0.0, dtype=F64))
    for x, (s_expected, i_expected, v_expected) in zip(inputs, expected, strict=True):
        s, state = cuba_lif_step(torch.tensor(x, dtype=F64), state, alpha=0.5, beta=0.9, theta=1.0)
        assert isinstance(state, CubaState)
        assert s.item() == s_expected
        assert state.i.item() == pytest.approx(i_expected, abs=1e-12)
        assert state.v.item() == pytest.approx(v_expected, abs=1e-12)


def test_cuba_module_matches_function() -> None:
    cuba = CubaLIF(alpha=0.5, beta=0.9, theta=1.0)
    x = torch.tensor([1.0, 0.5, 0.0])
    s_module, state_module = cuba(x)
    s_function, state_function = cuba_lif_step(x, cuba_init(x), 0.5, 0.9, 1.0)
    assert torch.equal(s_module, s_function)
    torch.testing.assert_close(state_module.v, state_function.v)


# --- surrogate gradient ---------------------------------------------------------------------


@pytest.mark.parametrize("slope", [2.0, 5.0])
def test_surrogate_gradient_is_arctan(slope: float) -> None:
    # v' = 0.5·1.0 + 0.3 = 0.8, so v' − ϑ = −0.2: no spike, ds/dx = (k/2) / (1 + (π/2·k·0.2)²).
    x = torch.tensor(0.3, dtype=F64, requires_grad=True)
    s, _ = lif_step(x, torch.tensor(1.0, dtype=F64), beta=0.5, theta=1.0, surrogate_slope=slope)
    (grad,) = torch.autograd.grad(s, x)
    assert s.item() == 0.0
    assert grad.item() == pytest.approx((slope / 2) / (1 + (math.pi / 2 * slope * 0.2) ** 2), rel=1e-12)
    assert grad.item() > 0


def test_surrogate_gradient_reaches_learnable_threshold() -> None:
    # ds/dϑ = −ds/dv; at v' − ϑ = 0.3 − 1 = −0.7 with k = 2: −1 / (1 + (0.7π)²).
    lif = LIF(beta=0.5, theta=1.0, learnable=True).double()
    s, _ = lif(torch.tensor(0.3, dtype=F64))
    s.backward()
    assert lif.theta.grad.item() == pytest.approx(-1 / (1 + (0.7 * math.pi) ** 2), rel=1e-12)


def test_forward_is_hard_threshold_without_gradient() -> None:
    x = torch.linspace(-1, 3, 101)
    v = torch.linspace(2, -2, 101)
    expected = (0.9 * v + x > 1.0).float()
    with torch.no_grad():
        s_inference, _ = lif_step(x.requires_grad_(), v, 0.9, 1.0)
    assert s_inference.grad_fn is None
    assert torch.equal(s_inference, expected)
    s_training, _ = lif_step(x, v, 0.9, 1.0)
    assert s_training.grad_fn is not None
    assert torch.equal(s_training, expected)
    s_plain, _ = lif_step(x.detach(), v, 0.9, 1.0)
    assert s_plain.grad_fn is None


# --- LMU ------------------------------------------------------------------------------------


def test_lmu_matrices_order_two() -> None:
    # R = [1, 3]; A00 = 1·(−1)^1 = −1, A01 = −1 (i < j), A10 = 3·(−1)^2 = 3, A11 = 3·(−1)^1 = −3;
    # B = [1·(−1)^0, 3·(−1)^1] = [1, −3]; all divided by θ = 4.
    a, b = lmu_matrices(2, theta=4.0)
    assert a.dtype == b.dtype == F64
    torch.testing.assert_close(a, torch.tensor([[-1.0, -1.0], [3.0, -3.0]], dtype=F64) / 4)
    torch.testing.assert_close(b, torch.tensor([1.0, -3.0], dtype=F64) / 4)


def test_zoh_order_one_closed_form() -> None:
    # d = 1: A = −1/θ, B = 1/θ → A_d = e^{−1/θ}, B_d = A⁻¹(e^A − 1)B = 1 − e^{−1/θ}.
    a_d, b_d = discretize_zoh(*lmu_matrices(1, theta=10.0))
    assert a_d.item() == pytest.approx(math.exp(-0.1), rel=1e-14)
    assert b_d.item() == pytest.approx(1 - math.exp(-0.1), rel=1e-13)


def test_zoh_matches_power_series() -> None:
    # A_d = Σ_k A^k/k!, B_d = Σ_k A^k B/(k+1)!, summed in numpy (‖A‖ ≤ 1 for θ = 16, d = 6).
    a, b = (t.numpy() for t in lmu_matrices(6, theta=16.0))
    a_series, b_series, term = np.zeros_like(a), np.zeros_like(b), np.eye(6)
    for k in range(40):
        a_series += term
        b_series += term @ b / (k + 1)
        term = term @ a / (k + 1)
    a_d, b_d = discretize_zoh(*lmu_matrices(6, theta=16.0))
    np.testing.assert_allclose(a_d.numpy(), a_series, atol=1e-13)
    np.testing.assert_allclose(b_d.numpy(), b_series, atol=1e-13)


def test_zoh_tends_to_euler_for_long_windows() -> None:
    # For large θ, A_d = I + A + O(1/θ²) and B_d = B + O(1/θ²).
    a, b = lmu_matrices(4, theta=1e4)
    a_d, b_d = discretize_zoh(a, b)
    assert (a_d - torch.eye(4, dtype=F64) - a).abs().max() < 1e-6
    assert (b_d - b).abs().max() < 1e-6


def test_discrete_lmu_is_stable() -> None:
    for order, theta in [(1, 1.0), (4, 8.0), (8, 32.0), (16, 100.0)]:
        a_d, _ = discretize_zoh(*lmu_matrices(order, theta))
        assert torch.linalg.eigvals(a_d).abs().max() < 1


def test_impulse_response_is_response_to_impulse() -> None:
    a_d, b_d = discretize_zoh(*lmu_matrices(6, theta=12.0))
    h = lmu_impulse_response(a_d, b_d, 30)
    assert h.shape == (30, 6)
    torch.testing.assert_close(h[0], b_d)
    torch.testing.assert_close(h[1:], h[:-1] @ a_d.T, rtol=0, atol=1e-15)
    impulse = torch.zeros(30, 1, dtype=F64)
    impulse[0] = 1
    torch.testing.assert_close(lmu_recurrent(impulse, a_d, b_d)[:, 0], h, rtol=0, atol=1e-15)


def _memory_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(120, 3, generator=generator, dtype=F64).to(dtype)
    a_d, b_d = discretize_zoh(*lmu_matrices(8, theta=32.0))
    return u, a_d, b_d, lmu_impulse_response(a_d, b_d, 120)


def test_recurrent_convolution_fft_agree_float64() -> None:
    u, a_d, b_d, h = _memory_inputs(F64)
    recurrent = lmu_recurrent(u, a_d, b_d)
    assert recurrent.shape == (120, 3, 8)
    for form in (lmu_convolution(u, h), lmu_fft(u, h)):
        assert form.shape == (120, 3, 8) and form.dtype == F64
        assert (form - recurrent).abs().max() < 1e-10


def test_recurrent_convolution_fft_agree_float32() -> None:
    u, a_d, b_d, h = _memory_inputs(torch.float32)
    reference = lmu_recurrent(u.double(), a_d, b_d)
    scale = reference.abs().max()
    for form in (lmu_recurrent(u, a_d, b_d), lmu_convolution(u, h), lmu_fft(u, h)):
        assert form.dtype == torch.float32
        assert (form.double() - reference).abs().max() < 1e-5 * scale


def test_convolution_with_short_kernel_truncates_memory() -> None:
    # With L taps, m_t = Σ_{k<L} H[k]·u_{t−k}: a step input saturates at Σ_{k<L} H[k].
    h = _memory_inputs(F64)[3]
    step = torch.ones(20, 1, dtype=F64)
    truncated = lmu_convolution(step, h[:5])
    torch.testing.assert_close(truncated[10, 0], h[:5].sum(0))
    torch.testing.assert_close(lmu_fft(step, h[:5]), truncated)


def test_legendre_readout_values() -> None:
    # P_i(2r − 1): r = 0 → (−1)^i, r = 1 → 1, r = 0.5 → P_i(0) = 1, 0, −1/2, 0, 3/8.
    torch.testing.assert_close(legendre_readout(5, 0.0), torch.tensor([1.0, -1, 1, -1, 1], dtype=F64))
    torch.testing.assert_close(legendre_readout(5, 1.0), torch.ones(5, dtype=F64))
    torch.testing.assert_close(legendre_readout(5, 0.5), torch.tensor([1.0, 0, -0.5, 0, 0.375], dtype=F64))
    assert legendre_readout(1, 0.3).tolist() == [1.0]


@pytest.mark.parametrize("delay_fraction", [0.0, 0.5, 1.0])
def test_lmu_reconstructs_delayed_sine(delay_fraction: float) -> None:
    # ZOH holds u_t over (t − 1, t], so the memory sees a staircase whose smooth version is the sine
    # shifted by half a step: u(t − r·θ) ≈ sin(2π(t − r·θ + 0.5)/80).
    order, theta, period = 8, 32.0, 80
    t = torch.arange(400, dtype=F64)
    u = torch.sin(2 * math.pi * t / period)[:, None]
    m = lmu_recurrent(u, *discretize_zoh(*lmu_matrices(order, theta)))[:, 0]
    reconstruction = m @ legendre_readout(order, delay_fraction)
    expected = torch.sin(2 * math.pi * (t - delay_fraction * theta + 0.5) / period)
    assert (reconstruction - expected)[100:].abs().max() < 0.02


# --- LMU cells ------------------------------------------------------------------------------


def test_lmu_cell_shapes_state_and_gradients() -> None:
    torch.manual_seed(0)
    cell = LMUCell(input_size=5, hidden_size=7, order=4, theta=8.0)
    assert {name for name, _ in cell.named_buffers()} == {"a_d", "b_d"}
    x = torch.randn(6, 2, 5)
    m = None
    hidden = []
    for x_t in x:
        h, m = cell(x_t, m)
        hidden.append(h)
    assert h.shape == (2, 7) and m.shape == (2, 4)
    assert (torch.stack(hidden) >= 0).all()
    # The memory is the linear LMU driven by u = relu(W_u·x).
    with torch.no_grad():
        u = torch.relu(cell.w_u(x))[..., 0]
    torch.testing.assert_close(m, lmu_recurrent(u, cell.a_d, cell.b_d)[-1])
    torch.stack(hidden).sum().backward()
    assert cell.w_u.weight.grad is not None and cell.w_u.weight.grad.abs().sum() > 0
    assert cell.w_h.weight.grad is not None and cell.w_h.weight.grad.abs().sum() > 0


def _run(cell: SpikingLMUCell, x: torch.Tensor, state: SpikingLMUState) -> tuple[torch.Tensor, SpikingLMUState]:
    spikes = []
    for x_t in x:
        s, state = cell(x_t, state)
        spikes.append(s)
    return torch.stack(spikes), state


def test_spiking_lmu_cell_threads_state() -> None:
    torch.manual_seed(1)
    cell = SpikingLMUCell(input_size=4, hidden_size=6, order=4, theta=8.0)
    x = 3 * torch.randn(8, 3, 4)
    with torch.no_grad():
        state0 = cell.initial_state(3)
        assert [tuple(t.shape) for t in state0] == [(3, 1), (3, 4), (3, 6)]
        spikes, state = _run(cell, x, state0)
        first, middle = _run(cell, x[:2], state0)
        rest, state_split = _run(cell, x[2:], SpikingLMUState(*(t.clone() for t in middle)))
    assert spikes.shape == (8, 3, 6)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert 0 < firing_rate(spikes) < 1
    assert torch.equal(torch.cat([first, rest]), spikes)
    for whole, split in zip(state, state_split, strict=True):
        assert torch.equal(whole, split)
    s_default, _ = cell(x[0])  # state None → zero state
    assert torch.equal(s_default, spikes[0])


def test_spiking_lmu_memory_integrates_spikes_not_currents() -> None:
    # W_u = 0, bias 2: the current into LIF_u is 2 every step, v' = 0.9·v + 2 > 1 always, so s^u = 1
    # and the memory is the LMU's response to a unit step (a current-driven memory would be twice it).
    cell = SpikingLMUCell(input_size=3, hidden_size=5, order=4, theta=8.0)
    with torch.no_grad():
        cell.w_u.weight.zero_()
        cell.w_u.bias.fill_(2.0)
        _, state = _run(cell, torch.randn(6, 2, 3), cell.initial_state(2))
    unit_step = torch.ones(6, 2)
    torch.testing.assert_close(state.m, lmu_recurrent(unit_step, cell.a_d, cell.b_d)[-1])


def test_spiking_lmu_cell_gradients_flow() -> None:
    torch.manual_seed(2)
    cell = SpikingLMUCell(input_size=4, hidden_size=6, order=4, theta=8.0)
    spikes, _ = _run(cell, torch.randn(5, 2, 4), cell.initial_state(2))
    spikes.sum().backward()
    for weight in (cell.w_u.weight, cell.w_h.weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0


# --- time-step mask -------------------------------------------------------------------------


def test_time_step_mask() -> None:
    mask = TimeStepMask(4)
    spikes = torch.ones(4, 2, 3)
    assert mask.active_steps() == 4
    assert torch.equal(mask(spikes), spikes)
    assert mask.regularizer().item() == pytest.approx(4 * torch.sigmoid(torch.tensor(1.0)).item())
    with torch.no_grad():
        mask.scores[2] = -0.5
    assert mask.active_steps() == 3
    assert mask.mask().tolist() == [1.0, 1.0, 0.0, 1.0]  # exactly 0 and 1 (hard + 0), not 1 ± ulp
    out = mask(spikes)
    assert out[2].abs().sum() == 0 and torch.equal(out[[0, 1, 3]], spikes[[0, 1, 3]])
    # Straight through: ∂Σout/∂score_t = (Σ spikes_t)·σ'(score_t) = 6·σ(s)(1 − σ(s)), also for the off step.
    out.sum().backward()
    sigma = torch.sigmoid(torch.tensor([1.0, 1.0, -0.5, 1.0]))
    torch.testing.assert_close(mask.scores.grad, 6 * sigma * (1 - sigma))
    with pytest.raises(ValueError, match="time steps"):
        mask(torch.ones(3, 2))


# --- the spiking branch: skipped steps, streaming --------------------------------------------


def _branch_head(seed: int) -> SpikingHead:
    """A spiking head on two 64-wide stems, 32 neurons wide, step 1 of 4 switched off (a middle step)."""
    torch.manual_seed(seed)
    head = SpikingHead(2, hidden=32, time_steps=4)
    with torch.no_grad():
        head.w1.weight.mul_(8.0)  # membranes that cross ϑ within a frame, across frames too
        head.mask.scores[1] = -1.0
    return head


def _host_loop(head: SpikingHead, features: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor):
    """The deployed loop: z = W₁·f once, the exported step on the active steps only, y their mean."""
    step, z, y = SpikingStep(head), head.w1(features), 0.0
    active = [t for t in range(head.time_steps) if torch.sigmoid(head.mask.scores[t]) > 0.5]
    for _ in active:
        out, v1, v2 = step(z, v1, v2)
        y = y + out
    return (y / len(active)).view(-1, 6, 3), v1, v2


def test_masked_steps_are_skipped_identically_in_training_and_deployment() -> None:
    head = _branch_head(0).train()
    features = torch.rand(16, 128)
    v1, v2 = torch.rand(16, 32), torch.rand(16, 32)
    out, spikes, state = head.run(features, {"lif1.v": v1, "lif2.v": v2})  # training: grad on, mask in the graph
    with torch.no_grad():
        expected, v1_host, v2_host = _host_loop(head, features, v1, v2)
    assert 0.05 < spikes["s1"][[0, 2, 3]].mean() < 0.95 and not spikes["s1"][1].any()
    assert torch.equal(state["lif1.v"], v1_host) and torch.equal(state["lif2.v"], v2_host)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.sum().backward()
    assert head.mask.scores.grad[1] != 0  # the skipped step still learns whether to come back


def test_the_state_carried_across_frames_equals_an_unrolled_reference() -> None:
    """Vehicles a, b, c over 6 frames: c joins at frame 2, a is absent at frame 3 and starts again from
    zero at frame 4. The stream equals, per vehicle, one LIF rollout over the active steps of all its
    frames in a row (membranes never reset between frames)."""
    head = _branch_head(1).eval()
    model = FusionModel(PERCEPTION_SHAPES).eval()
    stream = SpikingStream(model, head, "lidar+radar")
    present = [["a", "b"], ["a", "b"], ["b", "c", "a"], ["c", "b"], ["a", "b", "c"], ["b", "a", "c"]]
    rng = np.random.default_rng(2)
    frames = [{m: rng.random((len(ids), *PERCEPTION_SHAPES[m]), dtype=np.float32) for m in ("lidar", "radar")}
              for ids in present]  # fmt: skip
    streamed = [stream.estimate(ids, f) for ids, f in zip(present, frames, strict=True)]
    assert len(stream.table) == 3
    active = [0, 2, 3]
    states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    crossed = 0
    for k, ids in enumerate(present):
        if "a" not in ids:
            states.pop("a", None)
        for row, vid in enumerate(ids):
            with torch.no_grad():
                f = torch.cat(
                    [model.stems[m](torch.from_numpy(frames[k][m][row : row + 1])) for m in ("lidar", "radar")], 1
                )
                z = head.w1(f)
                v1, v2 = states.get(vid, (torch.zeros(1, 32), torch.zeros(1, 32)))
                y = torch.zeros(1, 18)
                for _ in active:
                    s1, v1 = lif_step(z, v1, 0.9, 1.0)
                    s2, v2 = lif_step(head.w2(s1), v2, 0.9, 1.0)
                    y = y + head.w3(s2)
                    crossed += int(s1.sum())
            states[vid] = (v1, v2)
            np.testing.assert_allclose(streamed[k][row], estimates((y / 3).view(1, 6, 3))[0], rtol=1e-5, atol=1e-5)
    assert crossed > 100
    # a reset stream differs: the carried state matters
    fresh = SpikingStream(model, head, "lidar+radar")
    assert not np.allclose(fresh.estimate(present[5], frames[5]), streamed[5], atol=1e-4)


# --- accounting -----------------------------------------------------------------------------


def test_accounting_known_answers() -> None:
    assert ENERGY_PJ == {"mac": 4.6, "ac": 0.9}
    # 1000 MACs · 4.6 pJ + 2000 SOPs · 0.9 pJ = 4600 + 1800 = 6400 pJ.
    assert energy_pj(macs=1000, sops=2000) == pytest.approx(6400.0)
    assert energy_pj(10, 10, table={"mac": 1.0, "ac": 0.5}) == pytest.approx(15.0)
    # 3 spikes among 8 entries.
    assert firing_rate(torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1]])) == 0.375
    assert linear_macs(128, 64) == 8192
    # r = 0.25 over T = 4 steps: as many accumulates as one dense step.
    assert synaptic_ops(0.25, 4, linear_macs(128, 64)) == 8192


def test_spike_monitor_records_rates_per_layer() -> None:
    # W = 0: LIF_u gets 2 every step, v' = 0.9·v + 2 > 1 always → rate 1;
    # LIF_h gets −1 every step, v' < 0 always → rate 0.
    cell = SpikingLMUCell(input_size=3, hidden_size=5, order=4, theta=8.0)
    with torch.no_grad():
        for layer, bias in ((cell.w_u, 2.0), (cell.w_h, -1.0)):
            layer.weight.zero_()
            layer.bias.fill_(bias)
    with SpikeMonitor(cell) as monitor, torch.no_grad():
        _run(cell, torch.randn(6, 2, 3), cell.initial_state(2))
    assert monitor.rates() == {"lif_u": 1.0, "lif_h": 0.0}
    assert monitor.neuron_steps == {"lif_u": 6 * 2 * 1, "lif_h": 6 * 2 * 5}
    cell(torch.randn(2, 3))  # closed: no more recording
    assert monitor.neuron_steps["lif_u"] == 12
