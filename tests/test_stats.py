"""`mean_ci`: the 95 % Student-t interval against quantiles computed by hand, and its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cavlab.runs.stats import mean_ci


def t975_closed_form(df: int) -> float:
    """t_{0.975, df} from the closed forms of Student's t quantile (df = 1, 2, 4)."""
    p = 0.975
    if df == 1:  # Cauchy
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    if df == 4:
        a = 4 * p * (1 - p)
        q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
        return 2 * math.sqrt(q - 1)
    raise ValueError(df)


@pytest.mark.parametrize(("sample", "df"), [([2.0, 5.0], 1), ([1.0, 2.0, 4.0], 2), ([3.0, 1.0, 4.0, 1.0, 5.0], 4)])
def test_half_width_is_the_t_quantile_times_the_standard_error(sample: list[float], df: int) -> None:
    n = len(sample)
    mean = sum(sample) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in sample) / (n - 1))
    got_mean, half = mean_ci(sample)
    assert got_mean == pytest.approx(mean, rel=1e-15)
    assert half == pytest.approx(t975_closed_form(df) * s / math.sqrt(n), rel=1e-12)


def test_the_quantile_is_exact_where_the_old_rounded_table_was_not() -> None:
    """n = 12 (df 11): t = 2.200985 (tables), where the rounded table used its df-15 entry 2.13 (3 % too narrow);
    df 1000: 1.962339, not the normal 1.96."""
    for n, t in ((12, 2.200985160), (4, 3.182446305), (1001, 1.962339)):
        sample = np.arange(n, dtype=float)
        standard_error = sample.std(ddof=1) / math.sqrt(n)
        assert mean_ci(list(sample))[1] / standard_error == pytest.approx(t, rel=1e-6)


def test_one_value_none_and_nan() -> None:
    assert mean_ci([7.0]) == (7.0, pytest.approx(math.nan, nan_ok=True))
    assert mean_ci([7.0, None, math.nan])[0] == 7.0 and math.isnan(mean_ci([7.0, None, math.nan])[1])
    assert all(math.isnan(x) for x in mean_ci([]))
    assert all(math.isnan(x) for x in mean_ci([math.nan, None]))
    assert mean_ci([1.0, None, 3.0, math.nan]) == mean_ci([1.0, 3.0])
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 0.0)
    assert mean_ci([1, 2, 3])[0] == 2.0  # ints too
