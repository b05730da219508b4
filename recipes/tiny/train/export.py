"""Ship the trained tiny model: the last finished DiT stage + the VAE (its fine-tuned decoder
when that stage ran) into the runtime's single-file format.

    python -m recipes.tiny.train.export --run runs/tiny [--stage dmd|student|teacher] \
        [--out liveavatar_rt/weights/tiny.safetensors]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from liveavatar_rt.io.tiny import save_tiny

from .dit_common import load_dit
from .vae import load_trained_vae

DIT_STAGES = ("dmd", "student", "teacher")
DEFAULT_OUT = Path(__file__).resolve().parents[3] / "liveavatar_rt" / "weights" / "tiny.safetensors"


def stage_summary(run, stage: str) -> dict:
    """Steps and wall seconds of a stage, from its checkpoint and log."""
    d = Path(run) / stage
    out = {}
    if (d / "ckpt.pt").exists():
        out["steps"] = int(torch.load(d / "ckpt.pt", map_location="cpu", weights_only=False)["step"])
    if (d / "log.csv").exists():
        with (d / "log.csv").open() as f:
            rows = list(csv.DictReader(f))
        if rows:
            out["seconds_last_session"] = float(rows[-1]["seconds"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--stage", choices=DIT_STAGES, default=None, help="default: the latest finished stage")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)

    stage = args.stage or next((s for s in DIT_STAGES if (Path(args.run) / s / "ckpt.pt").exists()), None)
    if stage is None:
        raise SystemExit(f"no trained DiT stage under {args.run} (run the teacher stage first)")
    model = load_dit(args.run, stage)
    vae = load_trained_vae(args.run)
    dec = Path(args.run) / "decoder" / "ckpt.pt"
    if dec.exists():  # decoder fine-tuned on a frozen encoder: same latent space
        vae.load_state_dict(torch.load(dec, map_location="cpu", weights_only=False)["model"])
    info = {"dit_stage": stage, "recipe": "recipes/tiny/train",
            "stages": {s: stage_summary(args.run, s) for s in ("vae", "decoder", "teacher", "student", "dmd")
                       if (Path(args.run) / s).exists()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_tiny(args.out, model.state_dict(), vae.state_dict(), vae.config, info=info)
    print(f"export: {stage} DiT + VAE -> {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB); {info['stages']}")


if __name__ == "__main__":
    main()
