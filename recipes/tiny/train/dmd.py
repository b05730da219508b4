"""Stage (c): self-forcing distribution-matching distillation (DMD) with the rolling sink and
history corruption.

    python -m recipes.tiny.train.dmd --run runs/tiny [--steps 600] [--minutes 20]

Generator = the stage-1 student. Per iteration it *generates* a 4-block window autoregressively
exactly as the runtime streams it (self forcing): each block runs the 4 sampling steps, and step
i attends the step-i inputs of the up to 3 blocks before it (the ring cache i) plus the
conditioning at the block's sink position; only each block's last step keeps a graph. The
cached context is corrupted with a little noise (history corruption), so that the student
learns to tolerate the imperfect caches of long rollouts. The DMD gradient moves the generated
latents along (fake score - real score): the real score is the frozen bidirectional teacher
(with audio guidance), the fake score a copy of the teacher trained online, by flow matching,
on the generator's outputs.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from liveavatar_rt.engine.sampler import flow_schedule

from .common import Budget, LossLog, Progress, cosine_lr, load_ckpt, optimize, save_ckpt, stage_dir
from .data import Prepped
from .dit_common import Conditioner, build_dit, load_dit, noisy, sample_sigma
from .dit_forward import RING_BLOCKS, Placement

BLOCKS = 4


def rollout(gen: Conditioner, batch: dict, place: Placement, noise: torch.Tensor, corrupt: float,
            rng: np.random.Generator) -> torch.Tensor:
    """Self-forcing generation of `BLOCKS` blocks -> clean latents [B, 16, 3*BLOCKS, h, w];
    the graph covers each block's last denoising step (and the conditioning it used)."""
    sig, ts = flow_schedule(4)
    text_kv, cond, (tok, glob) = gen(batch)
    B = noise.shape[0]
    ctx = [[] for _ in range(4)]  # ctx[i][j]: block j's step-i input, as the ring cache i holds it
    outs = []
    for b in range(BLOCKS):
        x = noise[:, :, 3 * b:3 * b + 3]
        lo = max(0, b - RING_BLOCKS + 1)
        place_b = Placement(place.first_frame + 3 * lo, place.offsets[lo:b + 1])
        audio_b = (tok[:, 3 * lo:3 * b + 3], glob[:, 3 * lo:3 * b + 3])
        for i in range(4):
            window = torch.cat([*ctx[i][lo:b], x], dim=2)
            with torch.set_grad_enabled(i == 3 and torch.is_grad_enabled()):
                v = gen.fwd.velocity(window, ts[i].expand(B, window.shape[2]), cond, text_kv, audio_b, place_b,
                                     causal=True)[:, :, -3:]
            noise_level = corrupt * float(rng.random())
            ctx[i].append(x.detach() + noise_level * torch.randn_like(x))
            x = x + (sig[i + 1] - sig[i]) * v  # Euler, as the runtime's sampler
            if i < 3:
                x = x.detach()
        outs.append(x)
    return torch.cat(outs, dim=2)


def velocity(cf: Conditioner, batch, x, sigma, place, drop_audio=None) -> torch.Tensor:
    text_kv, cond, audio = cf(batch, drop_audio)
    B, _, Fw = x.shape[:3]
    return cf.fwd.velocity(x, (sigma * 1000).view(B, 1).expand(B, Fw), cond, text_kv, audio, place, causal=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--fake-lr", type=float, default=1e-4)
    ap.add_argument("--fake-updates", type=int, default=2, help="fake-score updates per generator update")
    ap.add_argument("--guidance", type=float, default=2.0, help="audio guidance of the real score")
    ap.add_argument("--corrupt", type=float, default=0.1, help="max std of the noise added to cached context")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = stage_dir(args.run, "dmd")
    data = Prepped(stage_dir(args.run, "prep"))
    teacher = load_dit(args.run, "teacher").eval().requires_grad_(False)
    gen = build_dit(args.seed)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.0, 0.999))
    opt_f = torch.optim.AdamW(fake.parameters(), lr=args.fake_lr, weight_decay=0.0, betas=(0.0, 0.999))
    if (out / "ckpt.pt").exists():
        state = load_ckpt(out / "ckpt.pt", gen, opt_g)
        fake.load_state_dict(state["fake"])
        opt_f.load_state_dict(state["opt_fake"])
        step = state["step"]
    else:
        load_ckpt(stage_dir(args.run, "student") / "ckpt.pt", gen)
        step = 0
    rng = np.random.default_rng(args.seed + 7919 * step)
    torch.manual_seed(args.seed + step)
    cg, cr, cf = Conditioner(gen), Conditioner(teacher), Conditioner(fake)
    log = LossLog(out, ["dmd", "fake", "grad_norm"])
    budget = Budget(args.steps, args.minutes)
    progress = Progress("dmd", args.steps, step, log, lambda s, **kw: save_ckpt(
        out / "ckpt.pt", s, gen, opt_g, fake=fake.state_dict(), opt_fake=opt_f.state_dict(), **kw), log_every=1, ckpt_every=50)
    while not budget.done(step):
        for o, base in ((opt_g, args.lr), (opt_f, args.fake_lr)):
            for g in o.param_groups:
                g["lr"] = cosine_lr(step, args.steps, base, warmup=20)
        batch = data.sample(rng, args.batch, BLOCKS)
        place = Placement.sample(rng, BLOCKS)
        B = args.batch
        x_gen = rollout(cg, batch, place, torch.randn_like(batch["x0"]), args.corrupt, rng)

        # generator: DMD gradient (fake - real) at a random noise level
        sigma = sample_sigma(rng, B).clamp(0.02, 0.98)
        xt = noisy(x_gen.detach(), sigma, torch.randn_like(x_gen))
        s = sigma.view(B, 1, 1, 1, 1)
        with torch.no_grad():
            v_r = velocity(cr, batch, xt, sigma, place)
            if args.guidance != 1.0:
                v_n = velocity(cr, batch, xt, sigma, place, torch.ones(B, dtype=torch.bool))
                v_r = v_n + args.guidance * (v_r - v_n)
            v_f = velocity(cf, batch, xt, sigma, place)
            x0_r, x0_f = xt - s * v_r, xt - s * v_f
            w = (x_gen.detach() - x0_r).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-4)
            grad = (x0_f - x0_r) / w
        dmd = 0.5 * (x_gen - (x_gen - grad).detach()).square().mean()
        optimize(opt_g, dmd, gen.parameters())

        # fake score: flow matching on the generator's samples
        for _ in range(args.fake_updates):
            sig_f = sample_sigma(rng, B)
            eps = torch.randn_like(x_gen)
            v = velocity(cf, batch, noisy(x_gen.detach(), sig_f, eps), sig_f, place)
            fl = (v - (eps - x_gen.detach())).square().mean()
            optimize(opt_f, fl, fake.parameters())

        step += 1
        progress.tick(step, {"dmd": f"{dmd.item():.4f}", "fake": f"{fl.item():.4f}"},
                      dmd=dmd.item(), fake=fl.item(), grad_norm=grad.abs().mean().item())
    progress.close(step)
    print(f"dmd: {step} steps")


if __name__ == "__main__":
    main()
