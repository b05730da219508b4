"""Stage (a): the bidirectional teacher, trained with flow matching.

    python -m recipes.tiny.train.teacher --run runs/tiny [--steps 3000] [--minutes 25]

Windows of 2 blocks (6 latent frames = 24 video frames) of a clip at one noise level, every
frame attending every frame of the window plus the conditioning (reference + motion latents,
rotated at each block's sink position, as the runtime places them), and the window's audio.
10 % of samples get silent audio so the teacher can be guided on audio when it writes the
student's ODE targets. Loss: MSE between predicted and true velocity (noise - x0), the latents of the mouth box
weighted `--mouth-weight` times (lip sync lives there).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from .common import Budget, LossLog, Progress, cosine_lr, load_ckpt, optimize, save_ckpt, stage_dir
from .data import Prepped, loss_weights, weighted_mse
from .dit_common import Conditioner, build_dit, noisy, sample_sigma
from .dit_forward import Placement


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--audio-drop", type=float, default=0.1)
    ap.add_argument("--mouth-weight", type=float, default=4.0, help="loss weight of the mouth-box latents")
    ap.add_argument("--init", default=None,
                    help="warm start: model weights from this teacher ckpt.pt (e.g. a run on an earlier VAE), fresh optimizer")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = stage_dir(args.run, "teacher")
    data = Prepped(stage_dir(args.run, "prep"))
    model = build_dit(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step = 0
    if (out / "ckpt.pt").exists():
        step = load_ckpt(out / "ckpt.pt", model, opt)["step"]
    elif args.init:
        load_ckpt(Path(args.init), model)
    rng = np.random.default_rng(args.seed + 7919 * step)
    torch.manual_seed(args.seed + step)
    cond_fn = Conditioner(model)
    log = LossLog(out, ["loss"])
    budget = Budget(args.steps, args.minutes)
    progress = Progress("teacher", args.steps, step, log, lambda s, **kw: save_ckpt(out / "ckpt.pt", s, model, opt, **kw))
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        batch = data.sample(rng, args.batch, args.blocks)
        x0 = batch["x0"]
        B, _, Fw = x0.shape[:3]
        sigma = sample_sigma(rng, B)
        noise = torch.randn_like(x0)
        xt = noisy(x0, sigma, noise)
        drop = torch.from_numpy(rng.random(B) < args.audio_drop)
        text_kv, cond, audio = cond_fn(batch, drop)
        t = (sigma * 1000).view(B, 1).expand(B, Fw)
        v = cond_fn.fwd.velocity(xt, t, cond, text_kv, audio, Placement.sample(rng, args.blocks), causal=False)
        loss = weighted_mse(v.float() - (noise - x0), loss_weights(batch, args.mouth_weight, x0.shape[-2:]))
        optimize(opt, loss, model.parameters())
        step += 1
        progress.tick(step, {"loss": f"{loss.item():.4f}"}, loss=loss.item())
    progress.close(step)
    print(f"teacher: {step} steps -> {out / 'ckpt.pt'}")


if __name__ == "__main__":
    main()
