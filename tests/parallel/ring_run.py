"""Run TPP sessions in a fresh process (this process = rank 0), for tests/parallel.

    python -m tests.parallel.ring_run --layout 4+1 --out result.npz [--seeds 3,4] [--model DIR --prompt TEXT]
        [--no-decode]
        [--cancel-first-after 2] [--fault-rank 2 --fault-block 2 --fault-mode exit|hang]

Writes each session's frames and block latents into `--out` (npz) and the error text (if any),
each rank's pid / exit code / report and timings into `--out`.json, so that a test can run it
under a hard timeout in its own process group.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

SR = 16000


def face() -> np.ndarray:
    y, x = np.mgrid[0:96, 0:80]
    return np.stack([(x * 3) % 256, (y * 2) % 256, ((x + y) * 5) % 256], -1).astype(np.uint8)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
            + 0.02 * g.standard_normal(t.size)).astype(np.float32)


def install_fault(rank: int, block: int, mode: str) -> None:
    """Make worker `rank` exit (code 17) or hang after handling `block` (the ring forks after this)."""
    import sys

    from liveavatar_rt.parallel import worker
    from liveavatar_rt.parallel.comm import exit_process

    def after_block(r: int, n: int) -> None:
        if (r, n) != (rank, block):
            return
        if mode == "exit":
            print(f"liveavatar_rt.parallel: rank {r}: test fault, exiting after block {n}", file=sys.stderr)
            exit_process(17)
        while True:  # "hang": a stalled rank
            time.sleep(1)

    worker.after_block = after_block


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layout", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=2.2)
    p.add_argument("--seeds", default="3")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--kv-cache", default=None)
    p.add_argument("--decoder", default=None)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--cancel-first-after", type=int, default=-1)
    p.add_argument("--fault-rank", type=int, default=-1)
    p.add_argument("--fault-block", type=int, default=-1)
    p.add_argument("--fault-mode", default="exit")
    p.add_argument("--start-method", default="fork")
    p.add_argument("--model", default="tiny")
    p.add_argument("--prompt", default=None)
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--early", action="store_true", help="push the audio in 240 ms chunks and record whether "
                   "the first block arrives before end_audio()")
    a = p.parse_args()
    torch.set_num_threads(1)  # before any parallel region: the ring forks
    from liveavatar_rt.config import DTYPES
    from liveavatar_rt.engine import Pipeline
    from liveavatar_rt.parallel import RingOptions

    if a.fault_rank >= 0:
        install_fault(a.fault_rank, a.fault_block, a.fault_mode)
    info = {"error": "", "front_pid": os.getpid(), "sessions": []}
    arrays = {}
    t0 = time.monotonic()
    pipe = Pipeline.from_pretrained(a.model, seed=0, dtype=DTYPES[a.dtype], max_area=64 * 64, quiet=True,
                                    layout=a.layout, ring=RingOptions(timeout=a.timeout, start_method=a.start_method),
                                    precision=a.precision, decoder=a.decoder, kv_cache_dtype=a.kv_cache)
    ring = pipe.ring
    info["pids"] = {r: pr.pid for r, pr in ring.procs.items()}
    info["ring_up_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    try:
        if a.cancel_first_after >= 0:
            with pipe.session(face(), seed=99) as sess:
                sess.push_audio(speech(4.0, seed=1), SR)
                for block in sess.frames(timeout=120):
                    if block.index + 1 >= a.cancel_first_after:
                        break  # close() in __exit__ cancels the rest on every rank
            info["cancelled_s"] = time.monotonic() - t1
        for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
            frames, latents = [], []
            with pipe.session(face(), seed=seed, prompt=a.prompt, decode=not a.no_decode) as sess:
                pcm, pushed = speech(a.seconds), 0
                blocks = sess.frames(timeout=120)
                if a.early:  # live input: the first block must come while audio is still arriving
                    while sess.audio.blocks_ready() < 1:
                        sess.push_audio(pcm[pushed:pushed + 3840], SR)
                        pushed += 3840
                    first = next(blocks)
                    frames.append(first.video)
                    latents.append(first.latent)
                    info["early"] = {"pushed_s": pushed / SR, "ended": sess.audio.ended}
                sess.push_audio(pcm[pushed:], SR)
                sess.end_audio()
                for block in blocks:
                    frames.append(block.video)
                    latents.append(block.latent)
            arrays[f"frames_{i}"] = np.concatenate(frames)
            arrays[f"latents_{i}"] = torch.cat(latents).float().numpy()
            info["sessions"].append(sess.stats)
    except Exception as exc:  # the failure tests check the text
        info["error"] = f"{type(exc).__name__}: {exc}"
        info["failed_after_s"] = time.monotonic() - t1
    finally:
        pipe.close()
    info["reports"] = {r: {k: rep.get(k) for k in ("ok", "error", "exitcode", "stats")} for r, rep in ring.reports.items()}
    info["total_s"] = time.monotonic() - t0
    np.savez(a.out, **arrays)
    with open(a.out + ".json", "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()
