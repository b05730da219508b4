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
from tqdm import tqdm

from .common import Budget, LossLog, cosine_lr, load_ckpt, save_ckpt, stage_dir
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
    bar = tqdm(total=args.steps, initial=step, desc="decoder", dynamic_ncols=True)
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=20)
        x, enc, dec = streams.next(vae)
        with torch.no_grad():
            mu, _ = vae.moments(x, enc)
        y = vae.decode_raw(mu, dec)
        l1, gl = (y - x).abs().mean(), grad_l1(y, x)
        opt.zero_grad(set_to_none=True)
        (l1 + gl).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}")
        if step % 10 == 0:
            log.write(step, l1=l1.item(), grad=gl.item())
        if step % 100 == 0:
            save_ckpt(out / "ckpt.pt", step, vae, opt)
            log.plot()
    bar.close()
    save_ckpt(out / "ckpt.pt", step, vae, opt)
    log.plot()
    print(f"decoder: {step} steps -> {out / 'ckpt.pt'}")


if __name__ == "__main__":
    main()
