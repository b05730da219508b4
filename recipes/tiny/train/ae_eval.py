"""The autoencoder sweep's measurements: round-trip PSNR on held-out clips and decode time.

    python -m recipes.tiny.train.ae_eval --run runs/tae/w64          # a `train.tae` run
    python -m recipes.tiny.train.ae_eval --tiny liveavatar_rt/weights/tiny.safetensors   # shipped Wan VAE
    python -m recipes.tiny.train.ae_eval --vae-run runs/v2           # a `train.vae` run

PSNR (dB, frames in [0, 1], per clip over all its pixels, averaged over clips) of encode ->
decode at 128x128, 49 frames (4 blocks: decoders that drift after the first latents show it),
through the inference API (`encode` / `decode`, as the runtime
would): `psnr_proc` on 6 generated faces of held-out identities, `psnr_photo` on
`ae_data.EVAL_PHOTOS` (3 photographs of people + 2 other scenes, none in training) as slow pans.
`decode_ms`: median streaming decode of one 12-frame 128x128 block (3 latent frames, after a
first block) on `--threads` threads; the machine is shared, so it is the median of `--repeats`.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from .ae_data import eval_photo_clips, heldout_face_clips


@torch.no_grad()
def psnr(model, clips) -> float:
    out = []
    for v in clips:
        y = model.decode(model.encode(v))
        mse = ((y.float().clamp(-1, 1) - v) / 2).square().mean().item()
        out.append(10 * np.log10(1.0 / max(mse, 1e-12)))
    return float(np.mean(out))


@torch.no_grad()
def decode_ms(model, threads: int = 2, repeats: int = 5, latent_channels: int = 16) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        z = torch.randn(latent_channels, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        s = model.new_stream()
        s.decode(z)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            s.decode(z)
            ts.append(time.perf_counter() - t)
        return 1000 * float(np.median(ts))
    finally:
        torch.set_num_threads(old)


def evaluate(model, threads: int = 2, timing: bool = True, frames: int = 49) -> dict[str, float]:
    row = {"psnr_proc": psnr(model, heldout_face_clips(frames=frames)), "psnr_photo": psnr(model, eval_photo_clips(frames=frames))}
    if timing:
        row["decode_ms"] = decode_ms(model, threads)
    return row


def _load(args):
    if args.run:
        from .tae import load_trained_tae

        return load_trained_tae(args.run, torch.bfloat16 if args.bf16 else torch.float32)
    if args.vae_run:
        from .vae import load_trained_vae

        return load_trained_vae(args.vae_run, torch.bfloat16 if args.bf16 else torch.float32)
    from liveavatar_rt.io.tiny import load_tiny
    from liveavatar_rt.ops import OpTable

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    return load_tiny(args.tiny, OpTable("cpu", dtype))[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a train.tae run folder")
    src.add_argument("--vae-run", help="a train.vae run folder")
    src.add_argument("--tiny", help="a tiny model .safetensors (its Wan VAE)")
    ap.add_argument("--bf16", action="store_true", help="evaluate and time in bf16 (default fp32)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    row = evaluate(_load(args), args.threads)
    print(json.dumps({k: round(v, 2) for k, v in row.items()}))


if __name__ == "__main__":
    main()
