"""This machine's matmul peak, measured in the same run as the benchmark it normalises.

A square GEMM (default 2048^3 in bf16: 17 GFLOP, large enough for oneDNN/AMX or cuBLAS to reach
their best rate, small enough to take well under a second) is run a few times after a warm-up;
the best rate counts, because on a shared machine the fastest repetition is the least
disturbed one. The DiT's achieved FLOP/s divided by this gives its fraction of peak, with both
figures taken under the same load, threads and library versions.
"""
from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int = 2048, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                repeats: int = 8) -> dict:
    """-> {"flops_per_s", "n", "dtype", "repeats", "best_seconds", "median_seconds"}."""
    if n < 1 or repeats < 1:
        raise ValueError(f"need n >= 1 and repeats >= 1, got n={n}, repeats={repeats}")
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults, AMX tile configuration
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"flops_per_s": 2 * n**3 / times[0], "n": n, "dtype": str(dtype).replace("torch.", ""),
            "repeats": repeats, "best_seconds": times[0], "median_seconds": times[len(times) // 2]}
