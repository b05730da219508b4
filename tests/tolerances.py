"""Shared tolerance rules for tests (DESIGN.md "Tests").

- Parity with a reference in the same dtype: `assert_close_rel` with a relative-L2 and a
  max-abs bound.
- A fast provider vs the reference: its error against an fp32 reference may be at most 2x the
  error of the reference itself run in the low-precision dtype, plus an arithmetic-noise atol
  scaled by the output's magnitude (`provider_tolerance`, liveavatar_rt/ops/tolerance.py).
"""
from __future__ import annotations

import torch

from liveavatar_rt.ops.tolerance import provider_tolerance  # the rule lives once, in the runtime


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max_abs, rel_l2) of actual vs expected, both computed in float64."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    diff = a - e
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    denom = e.norm().item()
    return max_abs, diff.norm().item() / (denom if denom > 0 else 1.0)


def assert_provider_close(out: torch.Tensor, ref_lowp: torch.Tensor, ref_fp32: torch.Tensor, name: str = "") -> None:
    tol = provider_tolerance(ref_lowp, ref_fp32, ref_lowp.dtype)
    err = (out.double() - ref_fp32.double()).abs().max().item()
    if err > tol:
        raise AssertionError(f"{name}: provider error {err:.3g} vs fp32 reference exceeds {tol:.3g} "
                             f"(2x the {ref_lowp.dtype} reference's own error + atol)")


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel_l2: float, max_abs: float, name: str) -> tuple[float, float]:
    """Assert shape equality, finiteness, ||a - e|| / ||e|| <= rel_l2 and max |a - e| <= max_abs.

    Returns the measured (max_abs, rel_l2) so callers can report them.
    """
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    assert torch.isfinite(actual).all(), f"{name}: actual has {(~torch.isfinite(actual)).sum().item()} non-finite values"
    got_abs, got_rel = rel_err(actual, expected)
    ok = got_rel <= rel_l2 and got_abs <= max_abs
    if not ok:
        where = (actual.double().cpu() - expected.double().cpu()).abs().argmax().item()
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(where), tuple(expected.shape)))
        raise AssertionError(
            f"{name}: rel_l2 {got_rel:.3e} (limit {rel_l2:.1e}), max_abs {got_abs:.3e} (limit {max_abs:.1e}); "
            f"worst at {idx}: actual {actual[idx].item():.6g} vs expected {expected[idx].item():.6g}; "
            f"|expected| max {expected.abs().max().item():.4g}")
    return got_abs, got_rel
