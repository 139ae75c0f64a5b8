"""Spiking neurons, the Legendre Memory Unit, learned time-step masks and energy accounting.

Neurons are pure functions of (input, state) -> (output, state) in discrete time: one call is
one time step, the state is explicit and starts at zero. `nn.Module` wrappers hold only the
parameters, never the state.

LIF (leaky integrate-and-fire), state v:

    v'_t = β·v_{t−1} + x_t
    s_t  = H(v'_t − ϑ),      H(z) = 1 if z > 0 else 0   (strict: v'_t = ϑ does not spike)
    v_t  = v'_t − s_t·ϑ      (reset by subtraction, in the same step)

CuBa LIF (current-based), state (i, v):

    i_t  = α·i_{t−1} + x_t
    v'_t = β·v_{t−1} + i_t,  s_t = H(v'_t − ϑ),  v_t = v'_t − s_t·ϑ

Surrogate gradient: the forward pass is always the hard threshold. When a gradient is needed
(grad mode on and v or ϑ requires grad) the backward pass uses the arctan surrogate

    ∂s/∂v = (k/2) / (1 + (π/2·k·(v − ϑ))²),   slope k (default 2),

and ∂s/∂ϑ = −∂s/∂v; the reset term s_t·ϑ is not detached. Otherwise (inference, `torch.no_grad`)
the spike is plain `(v > ϑ).to(v.dtype)`, which keeps the graph simple for ONNX export.

LMU (Voelker, Kajić and Eliasmith 2019), memory of order d over a window of θ time steps:

    θ·ṁ(t) = A·m(t) + B·u(t),   A_ij = (2i+1)·(−1 if i < j else (−1)^(i−j+1)),  B_i = (2i+1)·(−1)^i,

discretised with zero-order hold over one step, m_t = A_d·m_{t−1} + B_d·u_t (m_{−1} = 0), so
m_t = Σ_k H_k·u_{t−k} with impulse response H_k = A_d^k·B_d. The input u_t is held over the step
that ends at t. The window is read out with shifted Legendre polynomials:
u(t − r·θ) ≈ Σ_i P_i(2r − 1)·m_{t,i}, 0 ≤ r ≤ 1.

Time-step mask (dynamic time steps, our reading of Datta et al. 2023): one score per step,
mask_t = 1[σ(score_t) > 0.5] in the forward pass, dσ/dscore in the backward pass.

Energy: Horowitz (ISSCC 2014), 45 nm, FP32: a MAC costs 3.7 + 0.9 = 4.6 pJ, a synaptic
operation (accumulate) 0.9 pJ. A spiking layer fed by spikes of firing rate r over T steps does
SOPs = r·T·MACs accumulates per sample, where MACs is the layer's dense count for one step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Param = float | Tensor
"""A neuron parameter: a float or a tensor that broadcasts against the input."""

SURROGATE_SLOPE = 2.0
"""Default slope k of the arctan surrogate gradient."""


# --- spikes and neurons ---------------------------------------------------------------------


class _ArctanSpike(torch.autograd.Function):
    """H(z) forward, (k/2) / (1 + (π/2·k·z)²) backward, for z = v − ϑ."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, slope: float) -> Tensor:
        ctx.save_for_backward(z)
        ctx.slope = slope
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        k = ctx.slope
        return grad_spikes * (k / 2) / (1 + (math.pi / 2 * k * z) ** 2), None


def spike(v: Tensor, theta: Param, surrogate_slope: float = SURROGATE_SLOPE) -> Tensor:
    """s = H(v − ϑ) (strict >), with the arctan surrogate gradient only when one is needed."""
    needs_grad = torch.is_grad_enabled() and (v.requires_grad or (isinstance(theta, Tensor) and theta.requires_grad))
    if not needs_grad:
        return (v > theta).to(v.dtype)
    return _ArctanSpike.apply(v - theta, surrogate_slope)


def lif_init(x: Tensor) -> Tensor:
    """Zero membrane potential shaped like the input `x`."""
    return torch.zeros_like(x)


def lif_step(
    x: Tensor, v: Tensor, beta: Param, theta: Param, surrogate_slope: float = SURROGATE_SLOPE
) -> tuple[Tensor, Tensor]:
    """One LIF step: v' = β·v + x, s = H(v' − ϑ), v_new = v' − s·ϑ. Returns (s, v_new)."""
    v_pre = beta * v + x
    spikes = spike(v_pre, theta, surrogate_slope)
    return spikes, v_pre - spikes * theta


def lif_sequence(
    x: Tensor, beta: Param, theta: Param, v: Tensor | None = None, surrogate_slope: float = SURROGATE_SLOPE
) -> tuple[Tensor, Tensor]:
    """LIF over a sequence x[T, ...] from v (zero if None). Returns (spikes[T, ...], v_final)."""
    v = lif_init(x[0]) if v is None else v
    spikes = []
    for x_t in x:
        s_t, v = lif_step(x_t, v, beta, theta, surrogate_slope)
        spikes.append(s_t)
    return torch.stack(spikes), v


class CubaState(NamedTuple):
    """State of a CuBa LIF neuron: synaptic current i and membrane potential v."""

    i: Tensor
    v: Tensor


def cuba_init(x: Tensor) -> CubaState:
    """Zero current and potential shaped like the input `x`."""
    return CubaState(torch.zeros_like(x), torch.zeros_like(x))


def cuba_lif_step(
    x: Tensor, state: CubaState, alpha: Param, beta: Param, theta: Param, surrogate_slope: float = SURROGATE_SLOPE
) -> tuple[Tensor, CubaState]:
    """One CuBa step: i = α·i + x, v' = β·v + i, s = H(v' − ϑ), v_new = v' − s·ϑ. Returns (s, state)."""
    current = alpha * state.i + x
    spikes, v = lif_step(current, state.v, beta, theta, surrogate_slope)
    return spikes, CubaState(current, v)


def _register(module: nn.Module, name: str, value: Param, learnable: bool) -> None:
    """A neuron parameter as an `nn.Parameter` (learnable) or a buffer (frozen)."""
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    if learnable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


class LIF(nn.Module):
    """LIF neurons with parameters β (leak) and ϑ (threshold); the state is passed in and out."""

    beta: Tensor
    theta: Tensor

    def __init__(
        self, beta: Param, theta: Param = 1.0, learnable: bool = False, surrogate_slope: float = SURROGATE_SLOPE
    ) -> None:
        super().__init__()
        _register(self, "beta", beta, learnable)
        _register(self, "theta", theta, learnable)
        self.surrogate_slope = surrogate_slope

    def forward(self, x: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step from v (zero if None). Returns (spikes, v_new)."""
        return lif_step(x, lif_init(x) if v is None else v, self.beta, self.theta, self.surrogate_slope)


class CubaLIF(nn.Module):
    """CuBa LIF neurons with parameters α (current decay), β (leak) and ϑ (threshold)."""

    alpha: Tensor
    beta: Tensor
    theta: Tensor

    def __init__(
        self,
        alpha: Param,
        beta: Param,
        theta: Param = 1.0,
        learnable: bool = False,
        surrogate_slope: float = SURROGATE_SLOPE,
    ) -> None:
        super().__init__()
        _register(self, "alpha", alpha, learnable)
        _register(self, "beta", beta, learnable)
        _register(self, "theta", theta, learnable)
        self.surrogate_slope = surrogate_slope

    def forward(self, x: Tensor, state: CubaState | None = None) -> tuple[Tensor, CubaState]:
        """One step from `state` (zero if None). Returns (spikes, new_state)."""
        state = cuba_init(x) if state is None else state
        return cuba_lif_step(x, state, self.alpha, self.beta, self.theta, self.surrogate_slope)


# --- Legendre Memory Unit -------------------------------------------------------------------


def lmu_matrices(order: int, theta: float) -> tuple[Tensor, Tensor]:
    """Continuous-time (A/θ, B/θ) of the LMU, float64, A[d, d] and B[d]; θ in time steps."""
    i = torch.arange(order, dtype=torch.float64)
    rate = (2 * i + 1)[:, None]
    i_minus_j = i[:, None] - i[None, :]
    a = rate * torch.where(i_minus_j < 0, -1.0, (-1.0) ** (i_minus_j + 1))
    b = (2 * i + 1) * (-1.0) ** i
    return a / theta, b / theta


def discretize_zoh(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold over one step: [[A_d, B_d], [0, 1]] = exp([[A, B], [0, 0]]), float64."""
    order = a.shape[0]
    augmented = torch.zeros(order + 1, order + 1, dtype=torch.float64)
    augmented[:order, :order] = a
    augmented[:order, order] = b
    expm = torch.linalg.matrix_exp(augmented)
    return expm[:order, :order], expm[:order, order]


def lmu_impulse_response(a_d: Tensor, b_d: Tensor, length: int) -> Tensor:
    """H[k] = A_d^k·B_d for k < length, shape [length, d]."""
    response = [b_d]
    for _ in range(length - 1):
        response.append(a_d @ response[-1])
    return torch.stack(response)


def lmu_recurrent(u: Tensor, a_d: Tensor, b_d: Tensor) -> Tensor:
    """m_t = A_d·m_{t−1} + B_d·u_t from m_{−1} = 0, for u[T, ...]; returns m[T, ..., d] in u's dtype."""
    a_d, b_d = a_d.to(u.dtype), b_d.to(u.dtype)
    m = u.new_zeros(*u.shape[1:], b_d.shape[0])
    memory = []
    for u_t in u:
        m = m @ a_d.T + u_t[..., None] * b_d
        memory.append(m)
    return torch.stack(memory)


def lmu_convolution(u: Tensor, h: Tensor) -> Tensor:
    """m_t = Σ_{k ≤ t} H[k]·u_{t−k} (causal convolution, `conv1d`), for u[T, ...] and H[L, d].

    Exact for L ≥ T; a shorter H truncates the memory to L taps."""
    steps = u.shape[0]
    h = h[:steps].to(u.dtype)
    taps = h.shape[0]
    signals = u.reshape(steps, -1).T[:, None, :]  # [N, 1, T]
    kernel = h.flip(0).T[:, None, :]  # [d, 1, L]: conv1d correlates, so the taps are reversed
    m = F.conv1d(F.pad(signals, (taps - 1, 0)), kernel)  # [N, d, T]
    return m.permute(2, 0, 1).reshape(*u.shape, h.shape[1])


def lmu_fft(u: Tensor, h: Tensor) -> Tensor:
    """The causal convolution of `lmu_convolution` by FFT: rfft of length 2T, product, irfft, first T."""
    steps = u.shape[0]
    h = h[:steps].to(u.dtype)
    u_spectrum = torch.fft.rfft(u, n=2 * steps, dim=0)[..., None]  # [T + 1, ..., 1]
    h_spectrum = torch.fft.rfft(h, n=2 * steps, dim=0)  # [T + 1, d]
    h_spectrum = h_spectrum.reshape(steps + 1, *([1] * (u.dim() - 1)), h.shape[1])
    return torch.fft.irfft(u_spectrum * h_spectrum, n=2 * steps, dim=0)[:steps]


def legendre_readout(order: int, delay_fraction: float) -> Tensor:
    """Weights w[d], w_i = P_i(2r − 1) with r = `delay_fraction`, so that u(t − r·θ) ≈ w·m_t (float64).

    Legendre recurrence: (n + 1)·P_{n+1}(x) = (2n + 1)·x·P_n(x) − n·P_{n−1}(x)."""
    x = 2 * delay_fraction - 1
    weights = [1.0, x][:order]
    for n in range(1, order - 1):
        weights.append(((2 * n + 1) * x * weights[n] - n * weights[n - 1]) / (n + 1))
    return torch.tensor(weights, dtype=torch.float64)


class _LMUMemory(nn.Module):
    """A_d and B_d of a frozen LMU window as float32 buffers."""

    a_d: Tensor
    b_d: Tensor

    def __init__(self, order: int, theta: float) -> None:
        super().__init__()
        a_d, b_d = discretize_zoh(*lmu_matrices(order, theta))
        self.register_buffer("a_d", a_d.float())
        self.register_buffer("b_d", b_d.float())
        self.order = order
        self.theta = theta

    def step(self, m: Tensor, u: Tensor) -> Tensor:
        """m_t = A_d·m_{t−1} + B_d·u_t for m[batch, d] and u[batch, 1]."""
        return m @ self.a_d.T + u * self.b_d


class LMUCell(_LMUMemory):
    """Non-spiking LMU step: u = relu(W_u·x) (scalar), m = A_d·m + B_d·u, h = relu(W_h·[m; x]).

    `order` is d and `theta` the window in time steps (frozen)."""

    def __init__(self, input_size: int, hidden_size: int, order: int, theta: float) -> None:
        super().__init__(order, theta)
        self.w_u = nn.Linear(input_size, 1)
        self.w_h = nn.Linear(order + input_size, hidden_size)

    def forward(self, x: Tensor, m: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x[batch, input_size], m[batch, d] (zero if None). Returns (h[batch, hidden_size], m)."""
        m = x.new_zeros(x.shape[0], self.order) if m is None else m
        m = self.step(m, torch.relu(self.w_u(x)))
        return torch.relu(self.w_h(torch.cat([m, x], dim=-1))), m


class SpikingLMUState(NamedTuple):
    """State of a `SpikingLMUCell`: v_u[batch, 1], m[batch, d], v_h[batch, hidden_size]."""

    v_u: Tensor
    m: Tensor
    v_h: Tensor


class SpikingLMUCell(_LMUMemory):
    """Spiking LMU step (LMUFormer-style: u and h spike, the memory stays real-valued and linear):

        s^u = LIF_u(W_u·x),  m = A_d·m + B_d·s^u,  s^h = LIF_h(W_h·[m; x]).

    `theta` is the LMU window in time steps; `beta` and `threshold` are the LIF leak and ϑ."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        beta: float = 0.9,
        threshold: float = 1.0,
        learnable: bool = False,
        surrogate_slope: float = SURROGATE_SLOPE,
    ) -> None:
        super().__init__(order, theta)
        self.hidden_size = hidden_size
        self.w_u = nn.Linear(input_size, 1)
        self.w_h = nn.Linear(order + input_size, hidden_size)
        self.lif_u = LIF(beta, threshold, learnable, surrogate_slope)
        self.lif_h = LIF(beta, threshold, learnable, surrogate_slope)

    def initial_state(self, batch: int) -> SpikingLMUState:
        """Zero state for `batch` samples, on the device and in the dtype of the weights."""
        zeros = self.w_u.weight.new_zeros
        return SpikingLMUState(zeros(batch, 1), zeros(batch, self.order), zeros(batch, self.hidden_size))

    def forward(self, x: Tensor, state: SpikingLMUState | None = None) -> tuple[Tensor, SpikingLMUState]:
        """x[batch, input_size], state (zero if None). Returns (s^h[batch, hidden_size], new_state)."""
        state = self.initial_state(x.shape[0]) if state is None else state
        spikes_u, v_u = self.lif_u(self.w_u(x), state.v_u)
        m = self.step(state.m, spikes_u)
        spikes_h, v_h = self.lif_h(self.w_h(torch.cat([m, x], dim=-1)), state.v_h)
        return spikes_h, SpikingLMUState(v_u, m, v_h)


# --- learned time steps ---------------------------------------------------------------------


class TimeStepMask(nn.Module):
    """Learned binary mask over T time steps: s_t ↦ mask_t·s_t, mask_t = 1[σ(score_t) > 0.5].

    The backward pass is straight-through: ∂mask_t/∂score_t = σ'(score_t). Scores start at
    `initial_score` > 0, so every step is on."""

    def __init__(self, time_steps: int, initial_score: float = 1.0) -> None:
        super().__init__()
        if initial_score <= 0:
            raise ValueError(f"initial_score must be > 0 so that every step starts on, got {initial_score}")
        self.scores = nn.Parameter(torch.full((time_steps,), initial_score))

    def mask(self) -> Tensor:
        """mask[T]: exactly 0 or 1 in the forward pass (hard + 0), sigmoid gradient."""
        probability = torch.sigmoid(self.scores)
        hard = (probability > 0.5).to(probability.dtype)
        return hard + (probability - probability.detach())

    def forward(self, spikes: Tensor) -> Tensor:
        """spikes[T, ...] with the switched-off steps zeroed."""
        if spikes.shape[0] != self.scores.shape[0]:
            raise ValueError(f"expected {self.scores.shape[0]} time steps, got {spikes.shape[0]}")
        return spikes * self.mask().reshape(-1, *([1] * (spikes.dim() - 1)))

    def active_steps(self) -> int:
        """Number of steps that are on."""
        return int((torch.sigmoid(self.scores) > 0.5).sum())

    def regularizer(self) -> Tensor:
        """Σ_t σ(score_t), a differentiable count of the active steps (add it to the loss to shorten T)."""
        return torch.sigmoid(self.scores).sum()


# --- accounting -----------------------------------------------------------------------------

ENERGY_PJ: Mapping[str, float] = {"mac": 4.6, "ac": 0.9}
"""Energy per operation [pJ], 45 nm FP32 (Horowitz 2014): MAC = mult 3.7 + add 0.9, AC = add 0.9."""


def firing_rate(spikes: Tensor) -> float:
    """Mean of a 0/1 spike tensor: spikes per neuron per time step."""
    return spikes.detach().to(torch.float64).mean().item()


def energy_pj(macs: float, sops: float, table: Mapping[str, float] = ENERGY_PJ) -> float:
    """E = MACs·E_mac + SOPs·E_ac [pJ]."""
    return macs * table["mac"] + sops * table["ac"]


def linear_macs(in_features: int, out_features: int) -> int:
    """MACs of a dense linear layer for one sample and one step (bias not counted)."""
    return in_features * out_features


def synaptic_ops(input_rate: float, time_steps: int, macs: int) -> float:
    """SOPs of a spiking layer per sample: r·T·MACs, r the firing rate of its input spikes.

    Each input spike triggers one accumulate per output it connects to; `macs` is the layer's
    dense count for one step (e.g. `linear_macs`)."""
    return input_rate * time_steps * macs


class SpikeMonitor:
    """Records the firing rate of every `LIF` and `CubaLIF` module of a model during forward passes.

        with SpikeMonitor(model) as monitor:
            model(x)
        monitor.rates()  # {"module.name": rate}

    Rates are accumulated over all calls (time steps) until the monitor is closed."""

    def __init__(self, model: nn.Module) -> None:
        self.spike_counts: dict[str, float] = {}
        self.neuron_steps: dict[str, int] = {}
        self._handles = [
            module.register_forward_hook(self._recorder(name))
            for name, module in model.named_modules()
            if isinstance(module, (LIF, CubaLIF))
        ]

    def _recorder(self, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: tuple[Tensor, Any]) -> None:
            spikes = output[0].detach()
            self.spike_counts[name] = self.spike_counts.get(name, 0.0) + spikes.sum().item()
            self.neuron_steps[name] = self.neuron_steps.get(name, 0) + spikes.numel()

        return record

    def rates(self) -> dict[str, float]:
        """Firing rate per recorded module name."""
        return {name: self.spike_counts[name] / self.neuron_steps[name] for name in self.spike_counts}

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> SpikeMonitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
