"""bench/gpu_check.py's in-process part: machine facts, the device, and sections 3-6 bound to
their shapes (14B per-layer on the GPU, the tiny preset on CPU for --dry-run)."""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Callable

import torch

from bench import gpu_check_model as model_checks
from bench import gpu_check_fp8 as fp8_checks
from bench import gpu_check_ops as op_checks
from liveavatar_rt.config import PRESETS

# (preset, latent h x w): 14B at 384x704 -> latent 48x88 -> 24x44 patches, 3168 tokens per block;
# the dry run uses the tiny preset on an 8x8 latent (48 tokens per block), as the engine tests do.
GEOMETRY = {False: ("s2v-14b", (48, 88)), True: ("tiny", (8, 8))}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts(args: argparse.Namespace) -> dict:
    """GPU, capability, versions of torch / CUDA / cuDNN / triton / python, CPUs."""
    facts = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
             "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": _version("triton"),
             "cuda_available": torch.cuda.is_available(),
             # an fp32 reference computed in TF32 would loosen every fp32 tolerance: record the switches
             "float32_matmul_precision": torch.get_float32_matmul_precision(),
             "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    if torch.cuda.is_available() and not args.dry_run:
        dev = torch.device(args.device)
        prop = torch.cuda.get_device_properties(dev)
        facts.update(gpu=prop.name, capability=".".join(map(str, torch.cuda.get_device_capability(dev))),
                     gpu_mem_gib=prop.total_memory / 2**30, sms=prop.multi_processor_count,
                     cudnn=torch.backends.cudnn.version(), device_count=torch.cuda.device_count(),
                     nvidia_smi=_nvidia_smi())
    return facts


def check_device(args: argparse.Namespace) -> torch.device | None:
    """The device the sections run on: CPU for the dry run, else the CUDA device (None if absent)."""
    if args.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return None
    dev = torch.device(args.device)
    torch.cuda.set_device(dev)
    return dev


def _vae_time(args: argparse.Namespace, device: torch.device, hw: tuple[int, int]) -> dict:
    """Measured streaming-decode time of one block, or the assumed one (given, or on failure)."""
    if args.vae_seconds is not None:
        return {"source": "assumed (--vae-seconds)", "seconds": args.vae_seconds}
    try:
        return model_checks.measure_vae(device, hw, args.dry_run)
    except Exception as e:  # noqa: BLE001  (the layouts still get a number, and the report says which)
        return {"source": f"assumed (bench/TPP_MODEL.md midpoint; measuring failed: {type(e).__name__}: {e})",
                "seconds": model_checks.ASSUMED_VAE_S}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def section(name: str, args: argparse.Namespace, device: torch.device) -> Callable[[], dict]:
    """Section `name` as a thunk for run_section."""
    preset, hw = GEOMETRY[args.dry_run]
    if name == "ops":
        return lambda: op_checks.check_ops(device, op_checks.geometry(PRESETS[preset], hw), args.dry_run)
    if name == "fp8":
        return lambda: fp8_checks.check_fp8(device, args.dry_run)
    if name == "cuda_graphs":
        return lambda: model_checks.check_graphs(preset, args.graph_layers, hw, device, args.graph_blocks)
    if name == "dit_timing":
        return lambda: model_checks.time_dit(preset, args.layers, hw, device, args.timing_blocks,
                                             _vae_time(args, device, hw), args.hop_us * 1e-6, args.dry_run)
    raise ValueError(f"unknown section {name!r}")
