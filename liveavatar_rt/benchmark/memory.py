"""Process memory figures, read the same way by the benchmark and the long-horizon evaluation.

RSS comes from /proc/self/statm (what the process holds now); the peak from getrusage
(ru_maxrss, the high-water mark since the process started: it includes model load). GPU memory
is torch's allocator peak, None without CUDA (never probed on CPU machines).
"""
from __future__ import annotations

import os
import resource

import torch

MIB = 2**20


def rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    """Peak resident set size of this process since it started, MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mib() -> float | None:
    """Peak CUDA memory allocated by torch on the current device, MiB; None without a GPU."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / MIB


def reset_gpu_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
