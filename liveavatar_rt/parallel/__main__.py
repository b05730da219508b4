"""python -m liveavatar_rt.parallel --layout 4+1 --image face.png --audio speech.wav --out out.mp4

Under torchrun (RANK etc. set) every process runs this; rank 0 writes the MP4. Without torchrun
the ring is spawned locally (gloo on 127.0.0.1), this process being rank 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from ..config import CUDA_GRAPH_CHOICES
from .launch import RingConfig, run_from_env, spawn_local


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m liveavatar_rt.parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", default="4+1", help="'R+1' (R DiT ranks + a VAE rank) or 'R' (VAE on the last DiT rank)")
    p.add_argument("--image", required=True)
    p.add_argument("--audio", required=True)
    p.add_argument("--out", required=True, help="output MP4 (H.264 + AAC)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--seed", type=int, default=0, help="noise seed (and the tiny preset's weight seed)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--max-area", type=int, default=None, help="generation area in pixels (default: the model's)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds any rank may wait without news")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (local spawn only)")
    p.add_argument("--cuda-graphs", choices=list(CUDA_GRAPH_CHOICES), default="auto",
                   help="replay each rank's owned steps as CUDA graphs (auto: where CUDA is)")
    return p



def _write(args, ring) -> int:
    from ..io.audio_file import read_audio
    from ..io.video import Mp4Writer

    pcm, rate = read_audio(args.audio)
    t0 = time.perf_counter()
    first, n = None, 0
    with ring.session(args.image, seed=args.seed) as sess:
        sess.push_audio(pcm, rate)
        sess.end_audio()
        with Mp4Writer(args.out, sess.width, sess.height, fps=ring.pipe.stream.fps, sample_rate=16000) as out:
            for block in sess.frames():
                first = first if first is not None else time.perf_counter() - t0
                out.write(block.video, block.audio)
                n += len(block.video)
    dt = time.perf_counter() - t0
    print(f"wrote {args.out}: {n} frames, {sess.width}x{sess.height}, layout {ring.layout}; "
          f"time to first frame {first:.2f} s, {n / dt:.1f} fps end to end")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cfg = RingConfig(model=args.model, seed=args.seed, dtype=dtype, max_area=args.max_area,
                     timeout=args.timeout, threads=args.threads, cuda_graphs=CUDA_GRAPH_CHOICES[args.cuda_graphs])
    if "RANK" in os.environ:
        run_from_env(args.layout, cfg, lambda ring: _write(args, ring))  # every rank exits in there
    torch.set_num_threads(args.threads)  # this process is rank 0, one of the ranks sharing the cores
    with spawn_local(args.layout, model=args.model, seed=args.seed, dtype=dtype, max_area=args.max_area,
                     timeout=args.timeout, threads=args.threads, cuda_graphs=CUDA_GRAPH_CHOICES[args.cuda_graphs]) as ring:
        return _write(args, ring)


if __name__ == "__main__":
    sys.exit(main())
