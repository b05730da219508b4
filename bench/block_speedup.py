"""Tiny-preset block time with the best providers vs reference ops everywhere, in one run.

    .venv/bin/python bench/block_speedup.py [--latent 16] [--rounds 40] [--threads N] [--profile best|ref]

Builds two block steppers on the same seeded tiny model (bf16): one with `OpTable(force="ref")`,
one with the default providers. Each round denoises one block (4 steps, DiT only) with each of
them, alternating which goes first, so both see the same machine load (the machine is shared:
compare only figures from one run). Reports the best and the median block time of each, their
ratios (and the same from process CPU time), and the relative L2 difference of the last block's latents (same inputs, same block
index). `--profile` prints torch.profiler's top ops for a few extra blocks of one side.
"""
from __future__ import annotations

import argparse
import statistics
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

WARMUP = 3


def build(force, hw):
    model = init_random_(CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.bfloat16, force=force)), seed=0)
    return make_stepper(model, hw=hw)


def timed(st, noise, feats, block):
    """(wall seconds, process CPU seconds, latent) of one block."""
    t0, c0 = time.perf_counter(), time.process_time()
    x = st.denoise(noise, block, feats)
    return time.perf_counter() - t0, time.process_time() - c0, x


def profile(st, noise, feats, first, blocks=5, rows=25):
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        for n in range(first, first + blocks):
            st.denoise(noise, n, feats)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 128x128 video)")
    ap.add_argument("--rounds", type=int, default=40, help="blocks timed per side")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", choices=("best", "ref"), default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = (args.latent, args.latent)
    steppers = {"ref": build("ref", hw), "best": build(None, hw)}
    noise, feats = (t.bfloat16() for t in block_inputs(steppers["ref"].model, 0, hw=hw))
    for st in steppers.values():
        for n in range(WARMUP):
            st.denoise(noise, n, feats)
    times = {"ref": [], "best": []}
    cpu = {"ref": [], "best": []}
    outs = {}
    for r in range(args.rounds):
        order = ("ref", "best") if r % 2 == 0 else ("best", "ref")
        for name in order:
            dt, ct, outs[name] = timed(steppers[name], noise, feats, WARMUP + r)
            times[name].append(dt)
            cpu[name].append(ct)
    ref_out, best_out = outs["ref"].float(), outs["best"].float()
    diff = ((best_out - ref_out).norm() / ref_out.norm()).item()
    r_min, b_min = min(times["ref"]), min(times["best"])
    r_med, b_med = statistics.median(times["ref"]), statistics.median(times["best"])
    print(f"threads {torch.get_num_threads()}, {args.rounds} blocks each, {hw[0]}x{hw[1]} latent")
    print(f"reference ops  best {r_min * 1e3:.1f} ms/block, median {r_med * 1e3:.1f}")
    print(f"best providers best {b_min * 1e3:.1f} ms/block, median {b_med * 1e3:.1f}")
    print(f"speedup (best-of) {r_min / b_min:.2f}x, (median) {r_med / b_med:.2f}x, "
          f"final latent rel L2 difference {diff:.2e}")
    # Process CPU time is less disturbed by other processes than wall time (with one thread
    # they agree on a quiet machine; with more, CPU time adds up every thread's work).
    rc, bc = min(cpu["ref"]), min(cpu["best"])
    print(f"process CPU time: reference {rc * 1e3:.1f} ms/block, best {bc * 1e3:.1f} ms/block, ratio {rc / bc:.2f}x")
    if args.profile:
        profile(steppers[args.profile], noise, feats, WARMUP + args.rounds)


if __name__ == "__main__":
    main()
