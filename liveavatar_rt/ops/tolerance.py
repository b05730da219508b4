"""The provider tolerance rule (DESIGN.md "Tests"), defined once: the unit tests apply it per
op (tests/tolerances.py) and `liveavatar-rt bench --compare` to a whole stream's latents.

A fast provider's max |error| against an fp32 reference may be at most 2x the error of the
reference itself run in the low-precision dtype, plus an arithmetic-noise atol scaled by the
output's magnitude: a different fp32 summation order alone moves a sum of many terms by a few
ulps of its largest values.
"""
from __future__ import annotations

import torch

# arithmetic-noise floor per dtype, relative to max(1, max |fp32 reference|)
NOISE_ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def provider_tolerance(ref_lowp: torch.Tensor, ref_fp32: torch.Tensor, dtype: torch.dtype) -> float:
    """Allowed max-abs error against `ref_fp32` of a provider computing in `dtype`."""
    scale = max(1.0, ref_fp32.double().abs().max().item())
    return 2 * (ref_lowp.double() - ref_fp32.double()).abs().max().item() + NOISE_ATOL[dtype] * scale
