"""Order statistics of a list of timings: min (the least disturbed run on a shared machine),
median (typical), p95 (the tail a real-time stream must budget for)."""
from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; NaN for an empty list."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} is outside [0, 100]")
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    """-> {n, min, median, p95, mean, total} (seconds in, seconds out)."""
    v = [float(x) for x in values]
    return {"n": len(v), "min": min(v) if v else float("nan"), "median": percentile(v, 50),
            "p95": percentile(v, 95), "mean": sum(v) / len(v) if v else float("nan"), "total": sum(v)}
