"""Stage 0 (alternative): train a TAEHV-layout autoencoder (liveavatar_rt/model/taehv.py) for
the tiny model, on generated faces, photographs without people and procedural textures.

    python -m recipes.tiny.train.tae --data data/tiny --run runs/tae/s64 --dec-widths 64,32,16,16 \
        --enc-width 32 --minutes 30 [--stream-chunk 2]

Samples: `--frames` (a multiple of 4) frames of `--crop` x `--crop`, drawn per sample from the
face clips (`vae.FramePool`), a pan over a training photo (`ae_data.TRAIN_PHOTOS`, fraction
`--photo-frac`) or a procedural texture (`--texture-frac`). Encode -> decode as the runtime
streams: the decoded frames are frames 0 .. T-4 of the input (the last latent's lookahead).
`--stream-chunk N` trains on whole streams instead, N latents per step with the memory carried
(`Streams`): needed, short samples alone leave a decoder that drifts after the second latent.
Loss: L1 + `--l2` x MSE + `--grad-weight` x L1 of image gradients (in [-1, 1] units).
Every `--val-every` steps `ae_eval` PSNRs go to `tae/val/log.csv`; at the end (or when the
budget stops it) `tae/result.json` gets the final PSNRs, decode ms per 12-frame 128x128 block
and the accumulated training minutes. Resumable from `tae/ckpt.pt`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from liveavatar_rt.model.taehv import TAEHV, DecodeState, TAEHVConfig

from . import ae_data
from .ae_eval import evaluate
from .common import Budget, LossLog, Progress, cosine_lr, load_ckpt, optimize, save_ckpt, stage_dir
from .vae import FramePool, grad_l1


def config_of(state_or_args) -> TAEHVConfig:
    get = state_or_args.get if isinstance(state_or_args, dict) else lambda k: getattr(state_or_args, k)
    widths = get("dec_widths")
    widths = tuple(int(w) for w in widths.split(",")) if isinstance(widths, str) else tuple(widths)
    return TAEHVConfig(encoder_width=int(get("enc_width")), decoder_widths=widths)


def load_trained_tae(run, dtype: torch.dtype = torch.float32) -> TAEHV:
    path = stage_dir(run, "tae") / "ckpt.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m recipes.tiny.train.tae --run {run}` first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = TAEHV(config_of(state["arch"]), dtype=dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in state["model"].items()})
    return model.requires_grad_(False).eval()


class Mixture:
    """Per sample: a face crop, a photo pan or a texture -> [B, 3, T, crop, crop] in [-1, 1]."""

    def __init__(self, pool: FramePool, rng: np.random.Generator, photo_frac: float, texture_frac: float):
        self.pool, self.rng, self.photo, self.texture = pool, rng, photo_frac, texture_frac

    def sample(self, batch: int, frames: int, crop: int) -> torch.Tensor:
        out = []
        for _ in range(batch):
            u = self.rng.uniform()
            if u < self.photo:
                img = ae_data.tint(ae_data.load_photo(str(self.rng.choice(ae_data.TRAIN_PHOTOS))), self.rng)
                out.append(ae_data.to_clip(ae_data.pan_clip(img, self.rng, frames, crop)))
            elif u < self.photo + self.texture:
                out.append(ae_data.to_clip(ae_data.texture_clip(self.rng, frames, crop)))
            else:
                out.append(self.pool.sample(1, frames, crop)[0])
        return torch.stack(out)


class Streams:
    """`batch` streams of `length` frames (mixture samples), advanced `chunk` latents (4 x chunk
    frames) per step with the encoder memory and decoder state carried over, detached: truncated
    backprop through the stream. Short samples only ever train the first latents after a zero
    memory; decoding then drifts after the second latent (measured: 21 dB on the first 5 frames,
    13 dB from frame 5 on, after 3000 steps on 8-frame samples). The runtime decodes forever."""

    def __init__(self, mix: Mixture, batch: int, crop: int, chunk: int, length: int):
        self.mix, self.batch, self.crop, self.n, self.length = mix, batch, crop, 4 * chunk, length - length % (4 * chunk)
        self.video, self.pos = None, 0

    def next(self, trim: int) -> tuple[torch.Tensor, torch.Tensor, list | None, DecodeState | None]:
        """-> (input frames, the target frames the decode returns, encoder memory, decoder state)."""
        if self.video is None or self.pos + self.n > self.length:
            self.video, self.pos, self.enc, self.dec = self.mix.sample(self.batch, self.length, self.crop), 0, None, None
        x = self.video[:, :, self.pos:self.pos + self.n]
        target = self.video[:, :, max(0, self.pos - trim):self.pos + self.n - trim]
        self.pos += self.n
        return x, target, self.enc, self.dec

    def carry(self, enc: list, dec: DecodeState) -> None:
        self.enc = [None if t is None else t.detach() for t in enc]
        self.dec = DecodeState([None if t is None else t.detach() for t in dec.memory], dec.frames)


def export_snapshot(ckpt: Path, dst: Path) -> None:
    """ckpt.pt -> bf16 weights + {"arch", "step", "train_seconds"} metadata (safetensors): what a
    fresh machine resumes from (`--init`), ~1/6 of the checkpoint (no optimizer state)."""
    from safetensors.torch import save_file

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    meta = {"arch": json.dumps(state["arch"]), "step": str(state["step"]),
            "train_seconds": str(state.get("train_seconds", 0.0))}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state["model"].items()}, str(dst), metadata=meta)
    print(f"wrote {dst} ({dst.stat().st_size / 2**20:.1f} MiB): step {state['step']}, arch {state['arch']}")


def read_snapshot_meta(path: Path) -> tuple[dict, int]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return json.loads(meta["arch"]), int(meta["step"])


def load_snapshot(path: Path, model: torch.nn.Module) -> int:
    """Load an --export snapshot into `model` (fp32); returns the step it was taken at."""
    from safetensors.torch import load_file

    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return read_snapshot_meta(path)[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/tiny")
    ap.add_argument("--run", default="runs/tae/default")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=None, help="wall-time budget of this invocation (resumable)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8, help="frames per sample, a multiple of 4")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--enc-width", type=int, default=None, help="encoder width (default 32; taew2_1: 64)")
    ap.add_argument("--dec-widths", default=None, help="the 4 decoder widths (default 64,32,16,16; taew2_1: 256,128,64,64)")
    ap.add_argument("--grad-weight", type=float, default=0.25)
    ap.add_argument("--l2", type=float, default=0.0, help="weight of an MSE term (PSNR is MSE)")
    ap.add_argument("--photo-frac", type=float, default=0.25)
    ap.add_argument("--texture-frac", type=float, default=0.15)
    ap.add_argument("--stream-chunk", type=int, default=0,
                    help="train on streams of --stream-length frames, this many latents per step (0: short samples)")
    ap.add_argument("--stream-length", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--init", default=None,
                    help="start a new run from a snapshot written by --export (weights + arch + step; fresh optimizer)")
    ap.add_argument("--export", default=None,
                    help="write the run's current weights as a small bf16 .safetensors snapshot (for the repo) and exit")
    args = ap.parse_args(argv)
    if args.frames % 4 or args.frames < 8:
        raise SystemExit(f"--frames must be a multiple of 4 and >= 8, got {args.frames}")

    torch.manual_seed(args.seed)
    out = stage_dir(args.run, "tae")
    if args.export:
        export_snapshot(out / "ckpt.pt", Path(args.export))
        return
    if args.init and not (out / "ckpt.pt").exists():
        init_arch, init_step = read_snapshot_meta(Path(args.init))
        if (args.enc_width or args.dec_widths) and init_arch != {"enc_width": args.enc_width or 32, "dec_widths": [
                int(w) for w in (args.dec_widths or "64,32,16,16").split(",")]}:
            raise SystemExit(f"{args.init} is {init_arch}; drop --enc-width/--dec-widths or use another snapshot")
        args.enc_width, args.dec_widths = init_arch["enc_width"], ",".join(map(str, init_arch["dec_widths"]))
    arch = {"enc_width": args.enc_width or 32, "dec_widths": [int(w) for w in (args.dec_widths or "64,32,16,16").split(",")]}
    if (out / "ckpt.pt").exists():  # the saved widths decide the model; asking for others is an error
        saved = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)["arch"]
        if (args.enc_width or args.dec_widths) and arch != saved:
            raise SystemExit(f"{out / 'ckpt.pt'} is {saved}; it cannot resume as {arch} (new --run?)")
        arch = saved
    model = TAEHV(config_of(arch))
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if (out / "ckpt.pt").exists():
        state = load_ckpt(out / "ckpt.pt", model, opt)
    elif args.init:
        state = {"step": load_snapshot(Path(args.init), model)}
    else:
        state = {"step": 0}
    step, seconds = state["step"], state.get("train_seconds", 0.0)
    rng = np.random.default_rng(args.seed + step)
    pool = FramePool(args.data, rng)
    mix = Mixture(pool, rng, args.photo_frac, args.texture_frac)
    streams = (Streams(mix, args.batch, args.crop, args.stream_chunk, min(args.stream_length, pool.frames_per_clip))
               if args.stream_chunk else None)
    log = LossLog(out, ["loss", "l1", "mse", "grad"])
    (out / "val").mkdir(exist_ok=True)
    val_log = LossLog(out / "val", ["psnr_proc", "psnr_photo"])
    t_start = time.time()
    extra = lambda: {"arch": arch, "args": vars(args), "train_seconds": seconds + time.time() - t_start}  # noqa: E731
    progress = Progress("tae", args.steps, step, log, lambda s, **kw: save_ckpt(out / "ckpt.pt", s, model, opt, **extra(), **kw))
    budget = Budget(args.steps, args.minutes)
    trim = model.config.frames_to_trim
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        if streams is not None:
            x, target, enc, dec = streams.next(trim)
        else:
            x, enc, dec = mix.sample(args.batch, args.frames, args.crop), None, None
            target = x[:, :, :x.shape[2] - trim]
        z, enc = model.encode_raw((x + 1) / 2, enc)
        y, dec = model.decode_raw(z, dec)
        y = y * 2 - 1
        if streams is not None:
            streams.carry(enc, dec)
        l1 = (y - target).abs().mean()
        mse = (y - target).square().mean()
        gl = grad_l1(y, target)
        loss = l1 + args.l2 * mse + args.grad_weight * gl
        optimize(opt, loss, model.parameters())
        step += 1
        progress.tick(step, {"l1": f"{l1.item():.4f}"}, loss=loss.item(), l1=l1.item(), mse=mse.item(), grad=gl.item())
        if args.val_every and step % args.val_every == 0:
            model.eval()
            val_log.write(step, **evaluate(model, timing=False))
            val_log.plot()
            model.train()
    progress.close(step)
    model.eval()
    row = evaluate(model, threads=1) | {"step": step, "train_minutes": extra()["train_seconds"] / 60, "arch": arch,
                                        "args": vars(args)}
    (out / "result.json").write_text(json.dumps(row, indent=1))
    print(f"tae: {step} steps; {json.dumps({k: v for k, v in row.items() if k != 'args'})}")


if __name__ == "__main__":
    main()
