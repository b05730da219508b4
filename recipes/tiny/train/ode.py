"""Stage (b), part 1: the teacher's few-step ODE trajectories, the student's regression targets.

    python -m recipes.tiny.train.ode --run runs/tiny [--count 256] [--substeps 3] [--guidance 1.5]

For windows of 4 blocks (12 latent frames) of training clips, the bidirectional teacher
integrates the flow ODE from pure noise with Euler, on a fine grid that contains the runtime's
4 sampling sigmas (each student interval split into `substeps`), with classifier-free guidance
on audio (silent-audio branch). Saved per trajectory: the states at the 4 student sigmas, the
end state, and where it came from (clip, first block, placement) so the student sees the same
conditioning.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from liveavatar_rt.engine.sampler import flow_schedule

from .common import stage_dir
from .data import Prepped
from .dit_common import Conditioner, load_dit
from .dit_forward import Placement

WINDOW_BLOCKS = 4


def fine_sigmas(substeps: int) -> tuple[torch.Tensor, list[int]]:
    """The student's sigmas [1, .858, .602, .009, 0] with each interval split evenly ->
    (fine sigmas [4*substeps + 1], index of each student sigma in them)."""
    coarse, _ = flow_schedule(4)
    fine = [coarse[0].item()]
    for a, b in zip(coarse[:-1].tolist(), coarse[1:].tolist()):
        fine += [a + (b - a) * (j + 1) / substeps for j in range(substeps)]
    return torch.tensor(fine), [k * substeps for k in range(4)]


@torch.no_grad()
def trajectories(model, data: Prepped, idx, first, place: Placement, noise, substeps: int, guidance: float):
    """-> (states at the student sigmas [B, 4, 16, 12, h, w], end state [B, 16, 12, h, w])."""
    cond_fn = Conditioner(model)
    batch = data.window(idx, first, WINDOW_BLOCKS)
    B, Fw = noise.shape[0], noise.shape[2]
    text_kv, cond, audio = cond_fn(batch)
    if guidance != 1.0:
        _, _, audio_null = cond_fn(batch, torch.ones(B, dtype=torch.bool))
    sig, keep = fine_sigmas(substeps)
    x, states = noise, []
    for k in range(len(sig) - 1):
        if k in keep:
            states.append(x)
        t = (sig[k] * 1000).expand(B, Fw)
        v = cond_fn.fwd.velocity(x, t, cond, text_kv, audio, place, causal=False)
        if guidance != 1.0:
            v0 = cond_fn.fwd.velocity(x, t, cond, text_kv, audio_null, place, causal=False)
            v = v0 + guidance * (v - v0)
        x = x + (sig[k + 1] - sig[k]) * v
    return torch.stack(states, dim=1), x


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--substeps", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    out = stage_dir(args.run, "ode")
    data = Prepped(stage_dir(args.run, "prep"))
    model = load_dit(args.run, "teacher").eval()
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rec = {k: [] for k in ("states", "final", "idx", "first", "first_frame", "offsets", "group")}
    for g in tqdm(range(0, args.count, args.batch), desc="ode", dynamic_ncols=True):
        idx = rng.integers(0, data.n, args.batch).tolist()
        first = rng.integers(0, data.blocks - WINDOW_BLOCKS + 1, args.batch).tolist()
        place = Placement.sample(rng, WINDOW_BLOCKS)
        noise = torch.randn(args.batch, 16, 3 * WINDOW_BLOCKS, *data.x0.shape[-2:], generator=gen)
        states, final = trajectories(model, data, idx, first, place, noise, args.substeps, args.guidance)
        rec["states"].append(states.bfloat16())
        rec["final"].append(final.bfloat16())
        rec["idx"] += idx
        rec["first"] += first
        rec["first_frame"] += [place.first_frame] * args.batch
        rec["offsets"] += [place.offsets] * args.batch
        rec["group"] += [g] * args.batch  # rows of a group share the placement
    saved = {"states": torch.cat(rec["states"]), "final": torch.cat(rec["final"]), "idx": torch.tensor(rec["idx"]),
             "first": torch.tensor(rec["first"]), "first_frame": torch.tensor(rec["first_frame"]),
             "offsets": torch.tensor(rec["offsets"]), "group": torch.tensor(rec["group"])}
    torch.save(saved, out / "trajectories.pt")
    print(f"ode: {len(rec['idx'])} trajectories of {WINDOW_BLOCKS} blocks -> {out / 'trajectories.pt'}")


if __name__ == "__main__":
    main()
