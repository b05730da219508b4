"""Linear trend of a metric over time, with its significance, so "no trend" can be checked.

Ordinary least squares y = a + b t. Windows of one stream are not independent (a slow wobble
makes neighbours alike), which makes the plain OLS p-value over-confident; the standard error
is therefore inflated with the effective sample size n_eff = n (1 - rho) / (1 + rho), rho the
lag-1 autocorrelation of the residuals (clipped to [0, 0.95]). The p-value is two-sided from
Student's t with n_eff - 2 degrees of freedom. Besides significance, `change` = b * duration is
reported next to the metric's spread: a significant but tiny slope is not drift.
"""
from __future__ import annotations

import math

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), a, b > 0, x in [0, 1]."""
    if not 0 <= x <= 1:
        raise ValueError(f"betainc: x={x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1 - math.exp(lbt) * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        return float("nan")
    if not math.isfinite(t):
        return 0.0
    return betainc(df / 2, 0.5, df / (df + t * t))


def linear_trend(t, y) -> dict:
    """t, y: [n] -> {slope (y units per t unit), intercept, p_value, n, n_eff, rho, change
    (slope x span of t), std (of y), change_over_std}. NaN entries of y are ignored;
    fewer than 3 points give NaN statistics."""
    t, y = np.asarray(t, np.float64), np.asarray(y, np.float64)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"t and y must be 1-D of one length, got {t.shape} and {y.shape}")
    ok = np.isfinite(y) & np.isfinite(t)
    t, y = t[ok], y[ok]
    n = len(y)
    nan = float("nan")
    out = {"slope": nan, "intercept": nan, "p_value": nan, "n": n, "n_eff": nan, "rho": nan,
           "change": nan, "std": float(y.std(ddof=1)) if n > 1 else nan, "change_over_std": nan}
    if n < 3 or np.ptp(t) == 0:
        return out
    tc = t - t.mean()
    slope = float((tc * (y - y.mean())).sum() / (tc * tc).sum())
    intercept = float(y.mean() - slope * t.mean())
    res = y - (intercept + slope * t)
    rho = float((res[1:] * res[:-1]).sum() / (res * res).sum()) if (res * res).sum() > 0 else 0.0
    rho = min(max(rho, 0.0), 0.95)
    n_eff = max(n * (1 - rho) / (1 + rho), 3.0)
    s2 = (res * res).sum() / (n - 2)
    se = math.sqrt(s2 / (tc * tc).sum() * (n - 2) / (n_eff - 2)) if n_eff > 2 else float("inf")
    if se == 0:
        p = 0.0 if slope != 0 else 1.0
    else:
        p = t_two_sided_p(slope / se, n_eff - 2)
    change = slope * float(np.ptp(t))
    out.update(slope=slope, intercept=intercept, p_value=float(p), n_eff=float(n_eff), rho=rho, change=change,
               change_over_std=change / out["std"] if out["std"] > 0 else nan)
    return out
