"""Small statistics shared by the studies, sweeps and evaluations."""

from __future__ import annotations

import math

import numpy as np

_T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
          15: 2.13, 20: 2.09, 30: 2.04}  # fmt: skip


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t)."""
    data = np.array([v for v in values if v is not None and not math.isnan(v)])
    if len(data) == 0:
        return math.nan, math.nan
    if len(data) == 1:
        return float(data[0]), math.nan
    df = len(data) - 1
    t = _T_975[min(k for k in _T_975 if k >= df)] if df <= 30 else 1.96
    return float(data.mean()), float(t * data.std(ddof=1) / math.sqrt(len(data)))
