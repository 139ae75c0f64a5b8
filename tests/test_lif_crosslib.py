"""cavlab's LIF and CuBa LIF against snnTorch and Norse, spike for spike on seeded inputs.

The mappings (β leak, ϑ threshold, reset by subtraction in the same step, strict v' > ϑ):

- snnTorch `Leaky(beta=β, threshold=ϑ, reset_mechanism="subtract", reset_delay=False)` and
  `Synaptic(alpha=α, beta=β, ...)` compute the same operations in the same order, so spikes and
  membranes are bit-identical while the membrane after a reset stays ≤ ϑ (v' ≤ 2ϑ). Above that
  snnTorch's pending reset (H(v − ϑ) of the reset membrane) subtracts ϑ before the next threshold
  test; `test_snntorch_differs_only_above_two_thresholds` pins that boundary. Its default surrogate
  `atan(alpha=2)` is cavlab's arctan surrogate with slope k = 2.
- Norse `LIFBoxCell` with dt = 1, τ_mem⁻¹ = 1 − β, v_leak = v_reset = 0, v_th = ϑ, method
  "heaviside" and `reset_subtract` integrates v + (1 − β)·(x_N − v); fed x_N = x / (1 − β) it is
  cavlab's v' = β·v + x. Exact on a dyadic grid; on random float64 inputs equal to rounding.
"""

from __future__ import annotations

import warnings

import pytest
import snntorch
import torch

with warnings.catch_warnings():  # norse scripts its functions with the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import norse.torch as norse
    from norse.torch.functional.reset import reset_subtract

from cavlab.perception.spiking import CubaLIF, CubaState, lif_init, lif_step

F64 = torch.float64
STEPS = 40


def _cavlab(x: torch.Tensor, beta: float, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    v, spikes, membranes = lif_init(x[0]), [], []
    for x_t in x:
        s, v = lif_step(x_t, v, beta, theta)
        spikes.append(s)
        membranes.append(v)
    return torch.stack(spikes), torch.stack(membranes)


def _snntorch(x: torch.Tensor, beta: float, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    neuron = snntorch.Leaky(beta=torch.tensor(beta, dtype=x.dtype), threshold=torch.tensor(theta, dtype=x.dtype),
                            reset_mechanism="subtract", reset_delay=False)  # fmt: skip
    mem, spikes, membranes = torch.zeros_like(x[0]), [], []
    for x_t in x:
        s, mem = neuron(x_t, mem)
        spikes.append(s.to(x.dtype))
        membranes.append(mem)
    return torch.stack(spikes), torch.stack(membranes)


def _norse(x: torch.Tensor, beta: float, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    p = norse.LIFBoxParameters(
        tau_mem_inv=torch.tensor(1 - beta, dtype=x.dtype), v_leak=torch.tensor(0.0, dtype=x.dtype),
        v_th=torch.tensor(theta, dtype=x.dtype), v_reset=torch.tensor(0.0, dtype=x.dtype), method="heaviside",
        reset_method=reset_subtract,
    )  # fmt: skip
    cell = norse.LIFBoxCell(p, dt=1.0)
    state, spikes, membranes = None, [], []
    for x_t in x:
        s, state = cell(x_t / (1 - beta), state)
        spikes.append(s)
        membranes.append(state.v)
    return torch.stack(spikes), torch.stack(membranes)


def _seeded(seed: int, dtype: torch.dtype, low: float = -0.5, high: float = 1.05) -> torch.Tensor:
    """x[T, 64, 32] uniform in [low, high): with β = 0.9, ϑ = 1 the membrane stays below 2ϑ."""
    gen = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(STEPS, 64, 32, generator=gen, dtype=F64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_lif_equals_snntorch_leaky_bit_for_bit(dtype: torch.dtype) -> None:
    x = _seeded(0, dtype)
    s_cav, v_cav = _cavlab(x, 0.9, 1.0)
    s_snn, v_snn = _snntorch(x, 0.9, 1.0)
    assert 0.05 < s_cav.mean() < 0.6
    assert torch.equal(s_cav, s_snn)
    assert torch.equal(v_cav, v_snn)


def test_lif_equals_norse_lif_box_on_seeded_inputs() -> None:
    x = _seeded(1, F64)
    s_cav, v_cav = _cavlab(x, 0.9, 1.0)
    s_norse, v_norse = _norse(x, 0.9, 1.0)
    assert 0.05 < s_cav.mean() < 0.6
    assert torch.equal(s_cav, s_norse)
    torch.testing.assert_close(v_norse, v_cav, rtol=0, atol=1e-12)


def test_all_three_agree_exactly_on_a_dyadic_grid_with_threshold_hits() -> None:
    """β = ½ and inputs on 2^-3: every value is exact in float64, and v' = ϑ happens (no spike)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 10, (STEPS, 64, 32), generator=gen).to(F64) / 8
    s_cav, v_cav = _cavlab(x, 0.5, 1.0)
    v_pre = torch.cat([torch.zeros_like(v_cav[:1]), v_cav[:-1]]) * 0.5 + x
    assert int((v_pre == 1.0).sum()) > 100 and not s_cav[v_pre == 1.0].any()  # strict threshold
    for s, v in (_snntorch(x, 0.5, 1.0), _norse(x, 0.5, 1.0)):
        assert torch.equal(s, s_cav)
        assert torch.equal(v, v_cav)


def test_snntorch_differs_only_above_two_thresholds() -> None:
    """x = (2.5, 0, 0) from rest, β = 0.9, ϑ = 1: both fire and leave v = 1.5 > ϑ. cavlab fires again on
    v' = 1.35; snnTorch subtracts its pending reset first (1.35 − ϑ < ϑ), stays silent and adds ϑ back."""
    x = torch.tensor([[2.5], [0.0], [0.0]], dtype=F64)
    s_cav, v_cav = _cavlab(x, 0.9, 1.0)
    s_snn, v_snn = _snntorch(x, 0.9, 1.0)
    assert s_cav[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert s_snn[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert v_cav[:, 0].tolist() == pytest.approx([1.5, 0.35, 0.315])
    assert v_snn[:, 0].tolist() == pytest.approx([1.5, 1.35, 1.215])


def test_cuba_lif_equals_snntorch_synaptic() -> None:
    x = _seeded(3, torch.float32, low=-0.3, high=0.35)
    cuba = CubaLIF(0.8, 0.9, 1.0)
    neuron = snntorch.Synaptic(alpha=0.8, beta=0.9, threshold=1.0, reset_mechanism="subtract", reset_delay=False)
    state, syn, mem, spikes = None, torch.zeros_like(x[0]), torch.zeros_like(x[0]), []
    for x_t in x:
        s, state = cuba(x_t, state)
        s_snn, syn, mem = neuron(x_t, syn, mem)
        assert isinstance(state, CubaState)
        assert torch.equal(s, s_snn) and torch.equal(state.i, syn) and torch.equal(state.v, mem)
        spikes.append(s)
    assert 0.05 < torch.stack(spikes).mean() < 0.6


def test_surrogate_gradient_equals_snntorch_atan() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(256, generator=gen) * 2.4 - 0.2
    v = torch.rand(256, generator=gen)
    x_cav, x_snn = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_cav, _ = lif_step(x_cav, v, 0.9, 1.0)
    s_snn, _ = snntorch.Leaky(beta=0.9, threshold=1.0, reset_delay=False)(x_snn, v)
    s_cav.sum().backward()
    s_snn.sum().backward()
    assert torch.equal(s_cav, s_snn)
    torch.testing.assert_close(x_cav.grad, x_snn.grad, rtol=1e-6, atol=0)
