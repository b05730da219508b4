"""Stage 0: train the tiny Wan2.1-layout VAE on generated talking-face frames.

    python -m recipes.tiny.train.vae --data data/tiny --run runs/tiny [--steps 4000] [--minutes 20]

The runtime's own `WanVAE` (published key names, causal 3-D convs, streaming cache) trained as
a VAE: random crops of 1 + 4k frames, chunked causal encode exactly as `WanVAE.encode` chunks
(1, 4, 4, ...), a reparameterised latent, per-latent-frame causal decode as the streaming
decoder runs. Loss: L1 + L1 of image gradients (keeps the mouth edges sharp) + a small KL.
Every `--val-every` steps the L1 of whole-frame reconstructions of fixed clips is written to
`vae/val/log.csv` (+ plot): the number to compare VAE runs by.
At the end the per-channel latent mean/std over the data are measured and stored with the
weights: the runtime normalises latents with them (`VAEConfig.latent_mean/std`).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.model.vae_blocks import CausalCache
from liveavatar_rt.ops import OpTable

from .common import Budget, LossLog, Progress, cosine_lr, load_ckpt, optimize, save_ckpt, stage_dir
from .data import frames_of, open_dataset

TINY_VAE_DIM = 8  # decode cost bounds real time on 2 cores: dim 8 decodes a 128x128 block in ~0.3 s


def build_vae(dtype: torch.dtype = torch.float32, cfg: VAEConfig | None = None) -> WanVAE:
    return WanVAE(cfg or VAEConfig(dim=TINY_VAE_DIM), dtype=dtype, ops=OpTable("cpu", dtype))


def ckpt_dim(state: dict) -> int:
    """The VAE width a checkpoint was trained at (checkpoints before `--dim` existed: 8)."""
    return int(state.get("vae_dim", TINY_VAE_DIM))


def load_trained_vae(run, dtype: torch.dtype = torch.float32) -> WanVAE:
    """The stage-0 result with its measured latent statistics, ready for `encode`/`decode`."""
    path = stage_dir(run, "vae") / "ckpt.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m recipes.tiny.train.vae --run {run}` first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "latent_mean" not in state:
        raise RuntimeError(f"{path} has no latent statistics: the VAE stage did not finish; run it again")
    cfg = VAEConfig(dim=ckpt_dim(state), latent_mean=state["latent_mean"], latent_std=state["latent_std"])
    vae = build_vae(dtype, cfg)
    vae.load_state_dict({k: v.to(dtype) for k, v in state["model"].items()})
    return vae.eval()


def grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


class FramePool:
    """A pool of decoded clips, refreshed a few at a time (decompressing a clip costs more than
    a training step on its crops)."""

    def __init__(self, root, rng: np.random.Generator, size: int = 48, refresh: int = 2):
        self.root, self.rng, self.refresh, self.calls = root, rng, refresh, 0
        self.ds = open_dataset(root)
        self.clips = [frames_of(self.ds, int(i)) for i in rng.integers(0, len(self.ds), size)]
        self.frames_per_clip = min(len(c) for c in self.clips)

    def sample(self, batch: int, frames: int, crop: int) -> torch.Tensor:
        """-> [B, 3, frames, crop, crop] in [-1, 1]: random clip, start frame and 8-aligned crop."""
        rng = self.rng
        self.calls += 1
        try:
            if self.calls % 100 == 0:  # the generator may still be writing clips: see the new ones
                self.ds = open_dataset(self.root)
            for _ in range(self.refresh):
                self.clips[int(rng.integers(len(self.clips)))] = frames_of(self.ds, int(rng.integers(len(self.ds))))
        except (FileNotFoundError, OSError, ValueError) as e:  # clips being rewritten: train on the pool
            print(f"vae: pool refresh skipped ({e})")
        out = []
        for _ in range(batch):
            clip = self.clips[int(rng.integers(len(self.clips)))]  # uint8 [T, H, W, 3]
            T, H, W, _ = clip.shape
            t0 = int(rng.integers(0, T - frames + 1))
            y0 = int(rng.integers(0, (H - crop) // 8 + 1)) * 8
            x0 = int(rng.integers(0, (W - crop) // 8 + 1)) * 8
            v = torch.from_numpy(np.ascontiguousarray(clip[t0:t0 + frames, y0:y0 + crop, x0:x0 + crop]))
            out.append(v.permute(3, 0, 1, 2).float() / 127.5 - 1)
        return torch.stack(out)


class Streams:
    """`batch` synchronous streams, each a fixed crop of a random clip, advanced `chunk` latents
    per training step with the encoder's and decoder's causal caches carried over, detached:
    truncated backprop through the stream. Short independent samples only ever show frames
    near the causal zero padding; the runtime decodes far from it, forever, so train there."""

    def __init__(self, pool: FramePool, batch: int, crop: int, chunk: int):
        self.pool, self.batch, self.crop, self.chunk = pool, batch, crop, chunk
        self.video, self.pos = None, 0

    def next(self, vae: WanVAE) -> tuple[torch.Tensor, CausalCache, CausalCache]:
        """-> (frames [B, 3, T, crop, crop], encoder cache, decoder cache) for this step."""
        n = 4 * self.chunk + (1 if self.pos == 0 else 0)
        if self.video is None or self.pos + n > self.video.shape[2]:
            self.video = self.pool.sample(self.batch, 1 + 4 * ((self.pool.frames_per_clip - 1) // 4), self.crop)
            self.pos, n = 0, 4 * self.chunk + 1
            self.enc, self.dec = CausalCache(vae.encoder.n_slots), CausalCache(vae.decoder.n_slots)
        for c in (self.enc, self.dec):  # truncate the graph at the step boundary
            c.slots = [None if t is None else t.detach() for t in c.slots]
        x = self.video[:, :, self.pos:self.pos + n]
        self.pos += n
        return x, self.enc, self.dec


@torch.no_grad()
def latent_stats(vae: WanVAE, ds, rng: np.random.Generator, clips: int = 24) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the (un-normalised) mu over whole frames of `clips` clips."""
    mus = []
    for _ in range(clips):
        clip = frames_of(ds, int(rng.integers(len(ds))))[:9]
        v = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float()[None] / 127.5 - 1
        mus.append(vae.moments(v)[0].transpose(0, 1).flatten(1))
    m = torch.cat(mus, dim=1)  # [z, N]
    return m.mean(1).tolist(), m.std(1).clamp_min(1e-3).tolist()


FIXED_CLIPS = (7, 101, 555, 1234, 2002, 2900)  # the clips every VAE run is compared on


@torch.no_grad()
def fixed_clip_l1(vae: WanVAE, ds, clips=FIXED_CLIPS, frames: int = 17) -> float:
    """Mean L1 (in [-1, 1] units) of whole-frame reconstructions of the first `frames` frames of
    fixed clips, encoded to mu and decoded from the stream start: the training loss moves with
    which clips and crops a step drew, this does not, so runs and checkpoints compare on it."""
    out = []
    for i in clips:
        clip = frames_of(ds, i % len(ds))[:frames]
        v = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float()[None] / 127.5 - 1
        mu, _ = vae.moments(v)
        out.append((vae.decode_raw(mu, CausalCache(vae.decoder.n_slots)) - v).abs().mean().item())
    return float(np.mean(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/tiny")
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=None, help="wall-time budget (stops early, resumable)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=5, help="1 + 4k frames per sample")
    ap.add_argument("--crop", type=int, default=48)
    ap.add_argument("--stream-chunk", type=int, default=0,
                    help="train on whole clips as streams, this many latents per step (0: short samples)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--grad-weight", type=float, default=1.0, help="weight of the image-gradient L1 term")
    ap.add_argument("--dim", type=int, default=None,
                    help=f"VAE width (Wan2.1 `dim`; default {TINY_VAE_DIM}, or the checkpoint's when resuming). "
                         "Decode cost grows ~dim^2: 128x128 block on one core ~0.35 s at 8, ~0.6 s at 12")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=200, help="steps between fixed-clip L1 measurements (0: never)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    out = stage_dir(args.run, "vae")
    dim = args.dim or TINY_VAE_DIM
    if (out / "ckpt.pt").exists():  # read once more by load_ckpt below: the width decides the model to build
        saved = ckpt_dim(torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False))
        if args.dim is not None and args.dim != saved:
            raise SystemExit(f"{out / 'ckpt.pt'} is a dim={saved} VAE; --dim {args.dim} cannot resume it (new --run?)")
        dim = saved
    vae = build_vae(cfg=VAEConfig(dim=dim)).init_random_(args.seed)
    vae.requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    step = load_ckpt(out / "ckpt.pt", vae, opt)["step"] if (out / "ckpt.pt").exists() else 0
    rng = np.random.default_rng(args.seed + step)
    pool = FramePool(args.data, rng)
    streams = Streams(pool, args.batch, args.crop, args.stream_chunk) if args.stream_chunk else None
    log = LossLog(out, ["loss", "l1", "grad", "kl"])
    (out / "val").mkdir(exist_ok=True)
    val_log, ds = LossLog(out / "val", ["fixed_clip_l1"]), open_dataset(args.data)
    budget = Budget(args.steps, args.minutes)
    progress = Progress("vae", args.steps, step, log,
                        lambda s, **kw: save_ckpt(out / "ckpt.pt", s, vae, opt, vae_dim=dim, **kw))
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        if streams is not None:
            x, enc, dec = streams.next(vae)
        else:
            x, enc, dec = pool.sample(args.batch, args.frames, args.crop), None, CausalCache(vae.decoder.n_slots)
        mu, log_var = vae.moments(x, enc)
        log_var = log_var.clamp(-30, 20)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        y = vae.decode_raw(z, dec)
        l1 = (y - x).abs().mean()
        gl = grad_l1(y, x)
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).mean()
        loss = l1 + args.grad_weight * gl + args.kl * kl
        optimize(opt, loss, vae.parameters())
        step += 1
        progress.tick(step, {"l1": f"{l1.item():.4f}", "grad": f"{gl.item():.4f}"},
                      loss=loss.item(), l1=l1.item(), grad=gl.item(), kl=kl.item())
        if args.val_every and step % args.val_every == 0:
            val_log.write(step, fixed_clip_l1=fixed_clip_l1(vae, ds))
            val_log.plot()
    mean, std = latent_stats(vae, ds, np.random.default_rng(args.seed))
    progress.close(step, latent_mean=mean, latent_std=std)
    print(f"vae: {step} steps; latent mean {np.round(mean, 3).tolist()} std {np.round(std, 3).tolist()}")


if __name__ == "__main__":
    main()
