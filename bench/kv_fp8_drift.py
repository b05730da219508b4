"""FP8 KV cache drift over a long stream (issue 18 item 2): the same session with the K/V
caches in bf16 and in E4M3, block by block, side by side.

    .venv/bin/python bench/kv_fp8_drift.py [--minutes 10] [--model tiny] [--threads 1]
        [--json bench/results/kv_fp8_drift_tiny.json]

Both pipelines load the same weights and run the same seed on the example portrait and speech
(looped); blocks are taken alternately, so memory stays flat however long the stream is. Per
block: the clean latent's relative L2 difference (fp8 vs bf16 cache) and the PSNR between the two
decoded videos; per minute: their mean / worst, and each stream's mean colour (a drift in
either shows as a trend). Drift = the slope of the per-minute mean latent difference: an error
that accumulates through the rolling cache grows; one that does not stays flat.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main(argv=None) -> int:
    from liveavatar_rt import Pipeline
    from liveavatar_rt.benchmark.e2e import EXAMPLE, looped_audio
    from liveavatar_rt.io.image import load_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/results/kv_fp8_drift_tiny.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    face = load_image(EXAMPLE / "portrait.png")
    pcm = looped_audio(str(EXAMPLE / "speech.wav"), a.minutes * 60)
    pipes = {kv: Pipeline.from_pretrained(a.model, quiet=True, kv_cache_dtype=kv) for kv in (None, "fp8")}
    sessions = {kv: p.session(face, seed=a.seed) for kv, p in pipes.items()}
    for s in sessions.values():
        s.push_audio(pcm, 16000)
        s.end_audio()
    fps = pipes[None].stream.fps
    rows, t0 = [], time.monotonic()
    for n, (b16, b8) in enumerate(zip(sessions[None].frames(), sessions["fp8"].frames())):
        l16, l8 = b16.latent.float(), b8.latent.float()
        rows.append({"block": n,
                     "latent_rel": ((l8 - l16).norm() / l16.norm()).item(),
                     "frame_psnr": psnr(torch.as_tensor(np.asarray(b8.video)), torch.as_tensor(np.asarray(b16.video))),
                     "colour_bf16": np.asarray(b16.video).reshape(-1, 3).mean(0).tolist(),
                     "colour_fp8": np.asarray(b8.video).reshape(-1, 3).mean(0).tolist(),
                     "frames": len(b16.video)})
        if n % 50 == 0:
            print(f"block {n}: latent rel {rows[-1]['latent_rel']:.4f}, PSNR {rows[-1]['frame_psnr']:.1f} dB, "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    for s in sessions.values():
        s.close()
    frames = np.cumsum([r["frames"] for r in rows])
    minute = (frames - 1) // (60 * fps)
    per_min = []
    for m in range(int(minute[-1]) + 1):
        sel = [r for r, mm in zip(rows, minute) if mm == m]
        per_min.append({"minute": m, "blocks": len(sel),
                        "latent_rel_mean": float(np.mean([r["latent_rel"] for r in sel])),
                        "latent_rel_max": float(np.max([r["latent_rel"] for r in sel])),
                        "frame_psnr_mean": float(np.mean([r["frame_psnr"] for r in sel])),
                        "frame_psnr_min": float(np.min([r["frame_psnr"] for r in sel])),
                        "colour_bf16": np.mean([r["colour_bf16"] for r in sel], 0).round(2).tolist(),
                        "colour_fp8": np.mean([r["colour_fp8"] for r in sel], 0).round(2).tolist()})
    mins = [p["minute"] for p in per_min]
    slope = float(np.polyfit(mins, [p["latent_rel_mean"] for p in per_min], 1)[0]) if len(mins) > 1 else 0.0
    ring = pipes["fp8"]
    result = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "model": a.model,
              "minutes": a.minutes, "blocks": len(rows), "threads": a.threads, "wall_s": time.monotonic() - t0,
              "latent_rel_slope_per_minute": slope, "per_minute": per_min,
              "note": f"weights: {ring.weights.get('file', ring.note or a.model)}"}
    for p in per_min:
        print(f"minute {p['minute']:3d}: latent rel mean {p['latent_rel_mean']:.4f} max {p['latent_rel_max']:.4f}, "
              f"PSNR mean {p['frame_psnr_mean']:.1f} min {p['frame_psnr_min']:.1f} dB, "
              f"colour bf16 {p['colour_bf16']} fp8 {p['colour_fp8']}")
    print(f"slope of the mean latent difference: {slope:+.2e} per minute")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
