"""Tiny-preset block time with the best providers vs reference ops everywhere, in one run.

    .venv/bin/python bench/block_speedup.py [--latent 16] [--blocks 20]

Runs the block stepper (4 denoising steps, DiT only) alternately with `OpTable(force="ref")` and
the default providers, reports the best time of each, the ratio, and the relative L2 difference
of the final latent (same inputs, bf16).
"""
from __future__ import annotations

import argparse
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


def run(force, hw, blocks):
    model = init_random_(CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.bfloat16, force=force)), seed=0)
    st = make_stepper(model, hw=hw)
    noise, feats = (t.bfloat16() for t in block_inputs(model, 0, hw=hw))
    for n in range(3):  # warm-up
        st.denoise(noise, n, feats)
    t0 = time.perf_counter()
    for n in range(3, 3 + blocks):
        x = st.denoise(noise, n, feats)
    return (time.perf_counter() - t0) / blocks, x.float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 128x128 video)")
    ap.add_argument("--blocks", type=int, default=20)
    args = ap.parse_args()
    hw = (args.latent, args.latent)
    times = {"ref": [], "best": []}
    for _ in range(2):
        for force, name in (("ref", "ref"), (None, "best")):
            dt, out = run(force, hw, args.blocks)
            times[name].append(dt)
            if name == "ref":
                ref_out = out
            else:
                diff = ((out - ref_out).norm() / ref_out.norm()).item()
    r, b = min(times["ref"]), min(times["best"])
    print(f"reference ops {r * 1e3:.1f} ms/block, best providers {b * 1e3:.1f} ms/block, speedup {r / b:.2f}x, "
          f"final latent rel L2 difference {diff:.2e}")


if __name__ == "__main__":
    main()
