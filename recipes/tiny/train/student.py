"""Stage (b), part 2: the causal block-wise student, initialised from the teacher and trained
on the teacher's ODE trajectories with timestep-forcing caches.

    python -m recipes.tiny.train.student --run runs/tiny [--steps 2000] [--minutes 20]

A sample is a 4-block trajectory window at one of the runtime's 4 sampling steps i: every
block's input is its own trajectory state at sigma_i, and block b attends the blocks the
runtime's ring cache i would hold (itself and up to 3 before it, all at step i) plus the
conditioning at its sink position. The student predicts a velocity v; its implied clean latent
x_i - sigma_i v is regressed onto the trajectory's end state (the ODE solution).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from liveavatar_rt.engine.sampler import flow_schedule

from .common import Budget, LossLog, Progress, cosine_lr, load_ckpt, optimize, save_ckpt, stage_dir
from .data import Prepped, loss_weights, weighted_mse
from .dit_common import Conditioner, build_dit
from .dit_forward import Placement
from .ode import WINDOW_BLOCKS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--mouth-weight", type=float, default=4.0, help="loss weight of the mouth-box latents")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = stage_dir(args.run, "student")
    data = Prepped(stage_dir(args.run, "prep"))
    traj = torch.load(stage_dir(args.run, "ode") / "trajectories.pt", weights_only=True)
    model = build_dit(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    if (out / "ckpt.pt").exists():
        step = load_ckpt(out / "ckpt.pt", model, opt)["step"]
    else:  # initialise from the teacher
        load_ckpt(stage_dir(args.run, "teacher") / "ckpt.pt", model)
        step = 0
    sigmas, timesteps = flow_schedule(4)
    rng = np.random.default_rng(args.seed + 7919 * step)
    cond_fn = Conditioner(model)
    log = LossLog(out, ["loss", "loss_step0", "loss_step3"])
    budget = Budget(args.steps, args.minutes)
    progress = Progress("student", args.steps, step, log, lambda s, **kw: save_ckpt(out / "ckpt.pt", s, model, opt, **kw))
    per_step = [0.0] * 4
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        # trajectory windows that share a placement (one ODE batch), all at one step i
        j = int(rng.integers(0, traj["idx"].shape[0]))
        group = np.flatnonzero(traj["group"].numpy() == int(traj["group"][j]))
        rows = rng.permutation(group)[: args.batch].tolist()
        i = int(rng.integers(0, 4))
        x = traj["states"][rows, i].float()
        target = traj["final"][rows].float()
        batch = data.window(traj["idx"][rows].tolist(), traj["first"][rows].tolist(), WINDOW_BLOCKS)
        place = Placement(int(traj["first_frame"][j]), traj["offsets"][j].tolist())
        text_kv, cond, audio = cond_fn(batch)
        B, _, Fw = x.shape[:3]
        v = cond_fn.fwd.velocity(x, timesteps[i].expand(B, Fw), cond, text_kv, audio, place, causal=True)
        loss = weighted_mse(x - sigmas[i] * v.float() - target, loss_weights(batch, args.mouth_weight, x.shape[-2:]))
        optimize(opt, loss, model.parameters())
        per_step[i] = 0.9 * per_step[i] + 0.1 * loss.item() if per_step[i] else loss.item()
        step += 1
        progress.tick(step, {"loss": f"{loss.item():.4f}", "step": i},
                      loss=loss.item(), loss_step0=per_step[0], loss_step3=per_step[3])
    progress.close(step)
    print(f"student: {step} steps -> {out / 'ckpt.pt'}")


if __name__ == "__main__":
    main()
