"""Evaluation outputs: the per-window CSV (written row by row, so a cut-off run keeps its data),
the JSON summary with a linear trend per metric, and a PNG with one panel per metric over time.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..benchmark.report import write_json  # noqa: F401  (re-exported: NaN -> null JSON)
from .longrun import DRIFT_METRICS, OPTIONAL_FIELDS, ROW_FIELDS
from .trend import linear_trend

# a drift metric "has a trend" when its slope is significant at this level AND the change over
# the run exceeds this many standard deviations of the metric (significant-but-tiny is not drift)
TREND_P = 0.01
TREND_MIN_CHANGE_OVER_STD = 1.0
PLOTTED = [k for k in ROW_FIELDS if k not in ("window", "video_minutes", "wall_seconds", "lipsync_lag", "lm_lip_lag",
                                             "lm_loudness_lag")]


class CsvLog:
    """Append window rows to a CSV as they come; `with CsvLog(path) as log: log(row)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=list(ROW_FIELDS))
        self._w.writeheader()
        self._f.flush()

    def __call__(self, row: dict) -> None:
        self._w.writerow({k: row[k] for k in ROW_FIELDS})
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "CsvLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV written by CsvLog, as floats. Errors name the file and the missing columns;
    the OPTIONAL_FIELDS (landmark measures) of a CSV written before they existed are NaN."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        have = set(reader.fieldnames or [])
        missing = set(ROW_FIELDS) - have - set(OPTIONAL_FIELDS)
        if missing:
            raise ValueError(f"{path} is not an eval CSV: columns {sorted(missing)} are missing")
        return [{k: float(r[k]) if k in have else float("nan") for k in ROW_FIELDS} for r in reader]


def summarize(rows: list[dict]) -> dict:
    """Per metric: mean/std/min/max over windows and the linear trend vs video minutes; the
    verdicts `no_drift` (no drift metric has a trend, see TREND_*) and `all_finite`."""
    t = np.array([r["video_minutes"] for r in rows])
    out = {}
    for k in PLOTTED:
        y = np.array([r[k] for r in rows], np.float64)
        fin = y[np.isfinite(y)]
        stats = {"mean": float(fin.mean()) if len(fin) else float("nan"),
                 "min": float(fin.min()) if len(fin) else float("nan"),
                 "max": float(fin.max()) if len(fin) else float("nan")}
        tr = linear_trend(t, y)
        stats["trend"] = {"slope_per_minute": tr["slope"], "p_value": tr["p_value"], "change": tr["change"],
                          "std": tr["std"], "change_over_std": tr["change_over_std"], "n": tr["n"],
                          "n_eff": tr["n_eff"], "residual_lag1_autocorrelation": tr["rho"]}
        stats["has_trend"] = bool(tr["p_value"] < TREND_P and abs(tr["change_over_std"]) > TREND_MIN_CHANGE_OVER_STD)
        out[k] = stats
    verdict = {"no_drift": not any(out[k]["has_trend"] for k in DRIFT_METRICS),
               "drift_metrics": list(DRIFT_METRICS),
               "rule": f"a metric has a trend if p < {TREND_P} (OLS slope vs video minutes, autocorrelation-"
                       f"adjusted) and |slope x duration| > {TREND_MIN_CHANGE_OVER_STD} std of the metric",
               "all_finite": all(r["nonfinite"] == 0 for r in rows)}
    return {"metrics": out, "verdict": verdict, "windows": len(rows),
            "video_minutes": float(t.max()) if len(t) else 0.0}


def plot(rows: list[dict], path: str | Path, title: str = "") -> None:
    """One panel per metric vs video minutes, with its fitted trend line (dashed)."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    t = np.array([r["video_minutes"] for r in rows])
    fig, axes = plt.subplots(len(PLOTTED), 1, figsize=(8, 1.9 * len(PLOTTED)), sharex=True)
    for ax, k in zip(axes, PLOTTED):
        y = np.array([r[k] for r in rows], np.float64)
        ax.plot(t, y, ".-", lw=0.8, ms=3)
        tr = linear_trend(t, y)
        if math.isfinite(tr["slope"]):
            ax.plot(t, tr["intercept"] + tr["slope"] * t, "--", lw=1,
                    label=f"slope {tr['slope']:.3g}/min, p={tr['p_value']:.2g}")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel(k, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("video minutes")
    if title:
        axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
