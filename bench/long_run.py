"""Long-horizon memory check: N blocks of the tiny generator with flat memory.

    .venv/bin/python bench/long_run.py --blocks 10000

Runs the block stepper (4 steps, timestep-forcing caches, rolling sink) for N blocks at an 8x8
latent and prints RSS at 10, 100, 1000, ... blocks and the process peak (ru_maxrss). Positions
pass 45000 latent frames at block 15000; use --start to begin near there.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine.conftest import block_inputs, make_stepper  # noqa: E402
from liveavatar_rt.config import from_name  # noqa: E402
from liveavatar_rt.model import CausalWanS2V  # noqa: E402
from liveavatar_rt.model.init import init_random_  # noqa: E402
from liveavatar_rt.ops import OpTable  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=10000)
    ap.add_argument("--start", type=int, default=0, help="first block index (15000 = latent frame 45000)")
    args = ap.parse_args()
    model = init_random_(CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.bfloat16)), seed=0)
    st = make_stepper(model)
    noise, feats = block_inputs(model, 0)
    marks, t0 = {10, 100, 1000, 10000, 100000}, time.perf_counter()
    for i in range(args.blocks):
        x = st.denoise(noise.bfloat16(), args.start + i, feats.bfloat16())
        if i + 1 in marks or i + 1 == args.blocks:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"blocks {i + 1:6d}  rss {rss_mib():7.1f} MiB  peak {peak:7.1f} MiB  "
                  f"finite {bool(torch.isfinite(x).all())}  {(time.perf_counter() - t0) / (i + 1) * 1e3:.1f} ms/block",
                  flush=True)


if __name__ == "__main__":
    main()
