"""Section 5 of bench/gpu_check.py: the fp8 linear (`fp8_linear`, provider `scaled_mm` =
torch._scaled_mm on FP8 tensor cores, sm89+) against its reference on the 14B GEMM shapes.

Rule: tests/ops/test_fp8_linear.py's, relative L2 < 2e-3 against the reference. The provider
accumulates with fast accumulation on tensor cores, so section 3's 2x rule (a low-precision
reference of the same math) does not apply; the max error in bf16 ulps is reported beside it.
"""
from __future__ import annotations

from typing import Callable

import torch

from bench.gpu_check_ops import gen, randn, time_ms
from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops.fp8_linear import _scaled_mm_linear, fp8_linear, quantize_e4m3

FP8_REL_L2 = 2e-3  # tests/ops/test_fp8_linear.py: fast accumulation on tensor cores

FP8_SHAPES_14B = [(3168, 5120, 5120), (3168, 5120, 13824), (3168, 13824, 5120)]  # (tokens, in, out)
FP8_SHAPES_DRY = [(40, 128, 96), (7, 64, 32)]


def _bf16_ulp(y: torch.Tensor) -> torch.Tensor:
    """One bf16 unit in the last place at each |y| (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(y.abs().clamp(min=1e-30))) - 7)


def fp8_case(tokens: int, n_in: int, n_out: int, device, seed: int = 1):
    """x [1, tokens, in] bf16; W8 [out, in] E4M3 + 1/s_w; bias [out] bf16 (tests/ops/test_fp8_linear.py's case)."""
    g = gen(device, seed)
    x = randn(g, 1, tokens, n_in).to(torch.bfloat16)
    w8, ws = quantize_e4m3(randn(g, n_out, n_in, scale=0.05).to(torch.bfloat16))
    b = randn(g, n_out, scale=0.1).to(torch.bfloat16)
    return x, w8, ws, b


@torch.no_grad()
def fp8_one(shape: tuple[int, int, int], fn: Callable, device: torch.device) -> dict:
    """The provider vs the reference on one GEMM shape; on CUDA also bf16-GEMM timing for scale."""
    x, w8, ws, b = fp8_case(*shape, device)
    ref = fp8_linear(x, w8, ws, b).float()
    got = fn(x, w8, ws, b)
    res = {"tokens_in_out": list(shape), "shape_ok": tuple(got.shape) == tuple(ref.shape) and got.dtype == x.dtype}
    got = got.float()
    diff = (got - ref).abs()
    res.update(max_abs=diff.max().item(), rel_l2=((got - ref).norm() / ref.norm()).item(),
               max_bf16_ulps=(diff / _bf16_ulp(ref)).max().item(), finite=bool(torch.isfinite(got).all()))
    res["pass"] = res["shape_ok"] and res["finite"] and res["rel_l2"] < FP8_REL_L2
    if device.type == "cuda":
        w = (w8.float() * ws).to(torch.bfloat16)
        flops = 2 * shape[0] * shape[1] * shape[2]
        res["provider_ms"] = time_ms(lambda: fn(x, w8, ws, b), device)
        res["bf16_linear_ms"] = time_ms(lambda: torch.nn.functional.linear(x, w, b), device)
        res["provider_tflops"] = flops / res["provider_ms"] / 1e9
        res["bf16_tflops"] = flops / res["bf16_linear_ms"] / 1e9
    return res


def check_fp8(device: torch.device, dry_run: bool) -> dict:
    """Section 5: on CUDA through the OpTable (must choose `scaled_mm`, sm89+); in the dry run the
    provider function itself on CPU (torch's CPU _scaled_mm, tiny shapes), as the unit tests do."""
    shapes = FP8_SHAPES_DRY if dry_run else FP8_SHAPES_14B
    if device.type == "cuda":
        table = OpTable(device, torch.bfloat16)
        chosen = table.chosen["fp8_linear"]
        why = dict(OPS["fp8_linear"].candidates(device, torch.bfloat16))["scaled_mm"]
        if chosen != "scaled_mm":
            return {"chosen": chosen, "refusal": why, "passed": False,
                    "error": f"OpTable chose {chosen!r}, not 'scaled_mm': {why}"}
        fn = table.fp8_linear
    else:
        chosen, fn = "scaled_mm (called directly on CPU)", _scaled_mm_linear
    results = []
    for shape in shapes:
        try:
            results.append(fp8_one(shape, fn, device))
        except Exception as e:  # noqa: BLE001  (record, then try the other shapes)
            results.append({"tokens_in_out": list(shape), "pass": False, "error": f"{type(e).__name__}: {e}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"provider": chosen, "rule": f"rel_l2 < {FP8_REL_L2} vs the reference (tests/ops/test_fp8_linear.py)",
            "shapes": results, "passed": all(r["pass"] for r in results)}
