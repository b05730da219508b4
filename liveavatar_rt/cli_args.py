"""Command-line options shared by generate, serve, bench and eval: the model's numerics."""
from __future__ import annotations

import argparse

from .config import KV_CACHE_DTYPES, PRECISIONS


def add_numerics_args(p) -> None:
    """--precision (linear layers) and --kv-cache (K/V cache storage) on parser or group `p`."""
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16",
                   help="linear layers: bf16, or fp8 (the published --fp8: E4M3 weights + activations)")
    p.add_argument("--kv-cache", choices=["auto", *KV_CACHE_DTYPES], default="auto",
                   help="K/V cache storage: auto (the compute dtype, as published) or fp8 (E4M3 + per-token "
                        "per-head scales: about half the cache memory)")


def kv_cache_dtype(args: argparse.Namespace) -> str | None:
    """from_pretrained's kv_cache_dtype for the parsed --kv-cache."""
    return None if args.kv_cache == "auto" else args.kv_cache
