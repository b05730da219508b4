"""Stage 0b (optional, runs beside the DiT stages): fine-tune the VAE decoder on the frozen
encoder's latents. The latent space the DiT learns does not move, so this can train while the
DiT trains and ships with it.

    python -m recipes.tiny.train.decoder --data data/tiny --run runs/tiny [--minutes 30]

Whole 128x128 frames (the decoder's middle attention then sees whole faces), streamed through
whole clips with the causal caches carried across steps (as the runtime decodes), the
deterministic latent (mu) as the runtime encodes it, L1 + image-gradient L1.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from .common import Budget, LossLog, Progress, cosine_lr, load_ckpt, optimize, save_ckpt, stage_dir
from .vae import FramePool, Streams, grad_l1, load_trained_vae


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/tiny")
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=2, help="latents per step")
    ap.add_argument("--crop", type=int, default=128, help="square crop (128: whole frames)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    out = stage_dir(args.run, "decoder")
    vae = load_trained_vae(args.run)
    for name, p in vae.named_parameters():
        p.requires_grad_(name.startswith(("decoder.", "conv2.")))
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    step = load_ckpt(out / "ckpt.pt", vae, opt)["step"] if (out / "ckpt.pt").exists() else 0
    rng = np.random.default_rng(args.seed + step)
    pool = FramePool(args.data, rng)
    streams = Streams(pool, args.batch, args.crop, args.chunk)
    log = LossLog(out, ["l1", "grad"])
    budget = Budget(args.steps, args.minutes)
    progress = Progress("decoder", args.steps, step, log, lambda s, **kw: save_ckpt(out / "ckpt.pt", s, vae, opt, **kw),
                        ckpt_every=100)
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=20)
        x, enc, dec = streams.next(vae)
        with torch.no_grad():
            mu, _ = vae.moments(x, enc)
        y = vae.decode_raw(mu, dec)
        l1, gl = (y - x).abs().mean(), grad_l1(y, x)
        optimize(opt, l1 + gl, params)
        step += 1
        progress.tick(step, {"l1": f"{l1.item():.4f}"}, l1=l1.item(), grad=gl.item())
    progress.close(step)
    print(f"decoder: {step} steps -> {out / 'ckpt.pt'}")


if __name__ == "__main__":
    main()
