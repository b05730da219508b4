"""Shared tolerance rules for tests (DESIGN.md "Tests").

- Parity with a reference in the same dtype: `assert_close_rel` with a relative-L2 and a
  max-abs bound.
- A fast provider vs the reference: its error against an fp32 reference may be at most 2x the
  error of the reference itself run in the low-precision dtype, plus an arithmetic-noise atol
  (`provider_tolerance`).
"""
from __future__ import annotations

import torch

# arithmetic-noise floor per dtype (absolute)
NOISE_ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max_abs, rel_l2) of actual vs expected, computed in float64."""
    a, e = actual.double(), expected.double()
    diff = a - e
    denom = e.norm().item()
    return diff.abs().max().item(), diff.norm().item() / (denom if denom > 0 else 1.0)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel_l2: float, max_abs: float, name: str = "") -> None:
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    m, r = rel_err(actual, expected)
    if not (m <= max_abs and r <= rel_l2):
        raise AssertionError(f"{name}: max_abs {m:.3g} (limit {max_abs:.3g}), rel_l2 {r:.3g} (limit {rel_l2:.3g})")


def provider_tolerance(ref_lowp: torch.Tensor, ref_fp32: torch.Tensor, dtype: torch.dtype) -> float:
    """Allowed max-abs error of a provider against the fp32 reference."""
    return 2 * (ref_lowp.double() - ref_fp32.double()).abs().max().item() + NOISE_ATOL[dtype]


def assert_provider_close(out: torch.Tensor, ref_lowp: torch.Tensor, ref_fp32: torch.Tensor, name: str = "") -> None:
    tol = provider_tolerance(ref_lowp, ref_fp32, ref_lowp.dtype)
    err = (out.double() - ref_fp32.double()).abs().max().item()
    if err > tol:
        raise AssertionError(f"{name}: provider error {err:.3g} vs fp32 reference exceeds {tol:.3g} "
                             f"(2x the {ref_lowp.dtype} reference's own error + atol)")
