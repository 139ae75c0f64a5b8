"""Small statistics shared by the studies, sweeps and evaluations."""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t, n − 1 degrees of freedom):
    t_{0.975, n−1} · s / √n. None and NaN values are left out; the half-width is NaN for fewer than two values."""
    data = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(data) == 0:
        return math.nan, math.nan
    if len(data) == 1:
        return float(data[0]), math.nan
    from scipy.stats import t  # here, not at import: scipy.stats takes most of a second to import

    n = len(data)
    return float(data.mean()), float(t.ppf(0.975, n - 1) * data.std(ddof=1) / math.sqrt(n))


def format_mean_ci(mean: float | None, half: float | None, digits: int = 3, signed: bool = False) -> str:
    """The text "mean ± half" (`digits` significant digits, two for the half-width); the mean alone without a
    half-width, "—" without a mean (None or NaN)."""
    if mean is None or math.isnan(mean):
        return "—"
    text = f"{mean:{'+' if signed else ''}.{digits}g}"
    return text if half is None or math.isnan(half) else f"{text} ± {half:.2g}"
