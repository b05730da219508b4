"""Command-line options shared by generate, serve, bench and eval: how the model is loaded."""
from __future__ import annotations

import argparse

from .config import KV_CACHE_DTYPES, PRECISIONS
from .engine.pipelined import SCHEDULES


def add_load_args(p) -> None:
    """--precision (linear layers), --kv-cache (K/V cache storage), --compile and --schedule on
    parser or group `p` (from_pretrained's precision, kv_cache_dtype, compile, schedule)."""
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16",
                   help="linear layers: bf16, or fp8 (the published --fp8: E4M3 weights + activations)")
    p.add_argument("--kv-cache", choices=["auto", *KV_CACHE_DTYPES], default="auto",
                   help="K/V cache storage: auto (the compute dtype, as published) or fp8 (E4M3 + per-token "
                        "per-head scales: about half the cache memory)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT blocks (inductor; the first block of a session compiles)")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="sequential",
                   help="one process: sequential (each block's steps in turn, lowest latency) or pipelined "
                        "(TPP in one process: every block in flight takes its next step in one batch; faster "
                        "when the audio is ahead of the video)")


def kv_cache_dtype(args: argparse.Namespace) -> str | None:
    """from_pretrained's kv_cache_dtype for the parsed --kv-cache."""
    return None if args.kv_cache == "auto" else args.kv_cache
