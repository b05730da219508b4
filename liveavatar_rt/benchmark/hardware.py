"""Hardware and software fingerprint: what a published figure was measured on.

Everything is read, never probed by running work: CPU model and core counts from /proc and
os, the CPU set this process may use (containers and taskset shrink it), torch's thread count,
the load average (other processes on a shared machine slow every figure down), GPU name and
memory only when torch has CUDA, library versions, and the providers an OpTable resolved.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from .. import envvars


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ('model name'), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) -> list[str]:
    """The matmul-relevant ISA extensions this CPU reports (AMX is what makes bf16 fast here)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def memory_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def gpu_info() -> list[dict]:
    """[{name, memory_gib, capability}] per visible CUDA device; [] without CUDA."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": p.name, "memory_gib": p.total_memory / 2**30, "capability": f"{p.major}.{p.minor}"})
    return out


def fingerprint(ops=None) -> dict:
    """-> JSON-ready dict. ops: an OpTable whose chosen providers are recorded (None: skipped)."""
    from .. import __version__, _ext

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": load[0],
        "memory_gib": memory_total_gib(),
        "gpus": gpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "liveavatar_rt": __version__,
        "extension": "loaded" if _ext.available() else f"unavailable: {_ext.load_error()}",
        "providers": dict(ops.chosen) if ops is not None else {},
        "provider_env": envvars.provider() or "",
    }
