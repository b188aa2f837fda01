"""Summaries over seeds: mean, sample standard deviation, and a 95% interval of a mean.

The interval uses Student's t (a handful of seeds is far from the normal limit). The t quantile
is computed here, by integrating the t density and bisecting, so that no statistics package is
needed for it.
"""

from __future__ import annotations

import math


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def median(values: list[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0.0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom (Simpson's rule from 0 to |x|)."""
    if x == 0:
        return 0.5
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def density(t: float) -> float:
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    a = abs(x)
    n = 2 * max(200, int(a * 200))  # even number of intervals
    h = a / n
    s = density(0) + density(a) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    half = s * h / 3
    return 0.5 + half if x > 0 else 0.5 - half


def t_quantile(p: float, df: int) -> float:
    """x with P(T <= x) = p, for 0.5 <= p < 1."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"need 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def ci95(values: list[float]) -> list[float]:
    """95% interval of the mean of `values` (t with n - 1 degrees of freedom); [m, m] for one value."""
    m = mean(values)
    if len(values) < 2:
        return [m, m]
    half = t_quantile(0.975, len(values) - 1) * std(values) / math.sqrt(len(values))
    return [m - half, m + half]


def summary(values: list[float]) -> dict:
    return {"mean": mean(values), "std": std(values), "ci95": ci95(values), "n": len(values)}
