"""`liveavatar-rt audio-check`: how far streaming (windowed) wav2vec2 features are from the
published offline ones, per hidden layer, and what that does to a generated block latent.

    liveavatar-rt audio-check --model DIR --audio speech.wav [--window 2.0 --lookahead 0.08]
    liveavatar-rt audio-check --model DIR --audio speech.wav --windows 1,2,4,8   # a sweep

DIR: a published-layout model directory (its wav2vec2-large-xlsr-53-english folder is used, and
the latent effect is measured with its DiT) or a wav2vec2 folder alone (features only). Runs
your own weights on your own speech; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..config import AUDIO_RATE


def relative_errors(stream: torch.Tensor, offline: torch.Tensor) -> tuple[list[float], float]:
    """stream, offline: [layers, dim, frames] -> (per-layer ||s - o|| / ||o||, overall)."""
    d, o = (stream - offline).double(), offline.double()
    per = (d.flatten(1).norm(dim=1) / o.flatten(1).norm(dim=1).clamp_min(1e-30)).tolist()
    return per, float(d.norm() / o.norm().clamp_min(1e-30))


def features_of(stream, blocks: int) -> torch.Tensor:
    return torch.cat([stream.block_features(n) for n in range(blocks)], dim=2)


def feature_deviation(features, pcm16: np.ndarray, window) -> dict:
    """Windowed vs offline features of the same 16 kHz audio (the blocks both produce)."""
    from .offline import OfflineAudioStream
    from .windowed import WindowedAudioStream

    off = OfflineAudioStream(features)
    off.push(pcm16, AUDIO_RATE)
    off.end()
    st = WindowedAudioStream(features, window)
    st.push(pcm16, AUDIO_RATE)
    st.end()
    blocks = min(off.total_blocks, st.total_blocks)
    t = time.perf_counter()
    got = features_of(st, blocks)
    seconds = time.perf_counter() - t
    per, overall = relative_errors(got, features_of(off, blocks))
    return {"window_s": window.window_s, "lookahead_s": window.lookahead_s, "blocks": blocks, "per_layer": per,
            "overall": overall, "wav2vec2_s_per_block": seconds / blocks}


def latent_deviation(model_dir: Path, pcm16: np.ndarray, window, blocks: int = 2, max_area: int = 64 * 64) -> float:
    """Relative error of block `blocks - 1`'s clean latent, windowed vs offline features (same
    seed, portrait and prompt), on the published-layout model in `model_dir`."""
    from ..engine import Pipeline

    pipe = Pipeline.from_pretrained(model_dir, quiet=True, max_area=max_area)
    face = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)  # a fixed stand-in portrait
    lat = []
    for aw in ("offline", window):
        with pipe.session(face, seed=0, decode=False, audio_window=aw) as sess:
            sess.push_audio(pcm16, AUDIO_RATE)
            sess.end_audio()
            it = sess.frames()
            lat.append([next(it).latent for _ in range(blocks)][-1].double())
    return float((lat[1] - lat[0]).norm() / lat[0].norm())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="published-layout model directory, or a wav2vec2 folder")
    p.add_argument("--audio", required=True, help="speech audio file (any rate; resampled to 16 kHz)")
    p.add_argument("--window", type=float, default=None, help="window_s (default: AudioWindow's)")
    p.add_argument("--lookahead", type=float, default=None, help="lookahead_s (default: AudioWindow's)")
    p.add_argument("--normalize", choices=["window", "running"], default=None,
                   help="normalise each window alone or with running stream statistics (default: AudioWindow's)")
    p.add_argument("--windows", default=None, help="comma-separated window_s values to sweep (overrides --window)")
    p.add_argument("--latent-blocks", type=int, default=2,
                   help="measure the latent of this many-th block (published-layout directory only; 0: skip)")


def run(args: argparse.Namespace) -> int:
    from ..io.audio_file import read_audio
    from .pcm import as_mono_float32
    from .resample import resample
    from .wav2vec import Wav2VecFeatures
    from .windowed import AudioWindow

    root = Path(args.model)
    folder = root / "wav2vec2-large-xlsr-53-english"
    full_model = folder.is_dir()
    if not full_model:
        folder = root
    features = Wav2VecFeatures(folder)
    pcm, rate = read_audio(args.audio)
    pcm = as_mono_float32(pcm, rate)
    pcm16 = resample(pcm, rate, AUDIO_RATE) if rate != AUDIO_RATE else pcm
    base = AudioWindow()
    look = base.lookahead_s if args.lookahead is None else args.lookahead
    wins = ([float(w) for w in args.windows.split(",")] if args.windows
            else [base.window_s if args.window is None else args.window])
    cfg = features.model.config
    print(f"wav2vec2 {folder}: {cfg.num_hidden_layers} layers, {cfg.hidden_size} wide; audio {args.audio}: "
          f"{len(pcm16) / AUDIO_RATE:.2f} s; relative error ||stream - offline|| / ||offline|| (fp32)")
    print(f"normalisation: {args.normalize or base.normalize}")
    print(f"{'window s':>8s} {'lookahead s':>11s} {'overall':>9s} {'worst layer':>13s} {'first/mid/last':>24s} "
          f"{'w2v s/block':>11s}" + (f" {'latent':>9s}" if full_model and args.latent_blocks else ""))
    rows = []
    for w in wins:
        win = AudioWindow(window_s=w, lookahead_s=look, normalize=args.normalize or base.normalize)
        r = feature_deviation(features, pcm16, win)
        per = r["per_layer"]
        worst = int(np.argmax(per))
        line = (f"{w:8.2f} {look:11.3f} {r['overall']:9.4f} {per[worst]:8.4f} (L{worst:2d}) "
                f"{per[0]:8.4f}/{per[len(per) // 2]:7.4f}/{per[-1]:7.4f} {r['wav2vec2_s_per_block']:11.3f}")
        if full_model and args.latent_blocks:
            r["latent"] = latent_deviation(root, pcm16, win, args.latent_blocks)
            line += f" {r['latent']:9.4f}"
        print(line, flush=True)
        rows.append(r)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="liveavatar-rt audio-check", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
