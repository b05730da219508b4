"""Encode the generated clips for DiT training with the trained tiny VAE.

    python -m recipes.tiny.train.prep --data data/tiny --run runs/tiny [--clips 400]

Per clip, exactly as a session conditions the model: the reference latent (the identity's
neutral portrait alone), the motion latents (the portrait repeated 73 frames), and the audio
features of the runtime's own streaming front end (`AudioStream` + `LogMelFeatures`) per block of
12 frames. The clean target latents encode frames 0 .. 4Fc (frame 0 alone is latent 0, dropped):
latent j >= 1 covers frames 4j-3 .. 4j, so block b's latents pair with the audio of frames
1 + 12b .. 12 + 12b, which is where the audio is cut from.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from liveavatar_rt.audio import AudioStream, LogMelFeatures
from liveavatar_rt.config import StreamConfig, from_name

from .common import stage_dir
from .data import clip_arrays, open_dataset
from .vae import load_trained_vae

SAMPLES_PER_FRAME = 640


def video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


def block_features(audio: np.ndarray, blocks: int, cfg) -> torch.Tensor:
    """16 kHz audio -> [blocks, layers, dim, 12] through the runtime's streaming front end."""
    st = AudioStream(16000, LogMelFeatures(n_mels=cfg.audio_dim, layers=cfg.audio_layers),
                     video_frames_per_block=12, fps=25)
    st.push(audio.astype(np.float32), 16000)
    st.end()
    return torch.stack([st.block_features(b) for b in range(blocks)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/tiny")
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--start", type=int, default=0, help="first clip (run several ranges in parallel)")
    ap.add_argument("--blocks", type=int, default=8, help="blocks of 12 frames per clip (8 = 3.84 s)")
    args = ap.parse_args(argv)

    cfg, stream = from_name("tiny"), StreamConfig()
    ds = open_dataset(args.data)
    vae = load_trained_vae(args.run, torch.float32)
    stop = min(args.start + args.clips, len(ds))
    nf = 12 * args.blocks
    out = {k: [] for k in ("x0", "ref", "motion", "feats", "mouth", "box")}
    with torch.no_grad():
        for i in tqdm(range(args.start, stop), desc="prep", dynamic_ncols=True):
            c = clip_arrays(ds, i)
            if len(c["frames"]) < nf + 1:
                raise ValueError(f"clip {i} has {len(c['frames'])} frames, need {nf + 1} for {args.blocks} blocks")
            ref = video_tensor(c["reference"][None])
            out["x0"].append(vae.encode(video_tensor(c["frames"][:nf + 1]))[:, 1:].bfloat16())
            out["ref"].append(vae.encode(ref).bfloat16())
            out["motion"].append(vae.encode(ref.expand(-1, stream.motion_frames, -1, -1)).bfloat16())
            audio = c["audio"][SAMPLES_PER_FRAME:(nf + 1) * SAMPLES_PER_FRAME]
            out["feats"].append(block_features(audio, args.blocks, cfg).half())
            out["mouth"].append(torch.from_numpy(np.asarray(c["mouth"], np.float32)[1:nf + 1]))
            out["box"].append(torch.tensor(np.asarray(c["mouth_box"], np.float32)))
    data = {k: torch.stack(v) for k, v in out.items()}
    path = stage_dir(args.run, "prep") / f"data_{args.start:06d}.pt"
    torch.save(data, path)
    print(f"prep: clips {args.start}..{stop - 1} -> {path} " + " ".join(f"{k}{tuple(v.shape)}" for k, v in data.items()))


if __name__ == "__main__":
    main()
