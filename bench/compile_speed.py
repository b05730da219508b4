"""`compile=True` vs eager, side by side (issue 20 item 4).

    .venv/bin/python bench/compile_speed.py [--presets tiny,medium] [--blocks 12] [--threads 1]
        [--json bench/results/compile_speed.json]

Per preset, an eager and a compiled pipeline stream the same session (example portrait and
speech, seed 0) with their blocks taken alternately, so both see the same machine load; reported:
the median denoise and decode time per block over the blocks after the first two (the first
compiles), the compile time (first block's extra), and the latent difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from liveavatar_rt import Pipeline
    from liveavatar_rt.benchmark.e2e import EXAMPLE, looped_audio
    from liveavatar_rt.io.image import load_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,medium")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="bench/results/compile_speed.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    face = load_image(EXAMPLE / "portrait.png")
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "threads": a.threads, "presets": {}}
    for preset in a.presets.split(","):
        pipes = {c: Pipeline.from_pretrained(preset, quiet=True, compile=c) for c in (False, True)}
        pcm = looped_audio(str(EXAMPLE / "speech.wav"), a.blocks * 0.48 + 0.2)
        sessions = {c: p.session(face, seed=0) for c, p in pipes.items()}
        times = {c: [] for c in pipes}
        lat = {c: [] for c in pipes}
        for s in sessions.values():
            s.push_audio(pcm, 16000)
            s.end_audio()
        its = {c: s.frames() for c, s in sessions.items()}
        for n in range(a.blocks):
            for c in (False, True):
                t = time.perf_counter()
                b = next(its[c])
                tm = b.timings
                times[c].append({"wall": time.perf_counter() - t, "vae_decode": tm["vae_decode"],
                                 "denoise": tm["audio_encoder"] + sum(v for k, v in tm.items() if k.startswith("step"))})
                lat[c].append(b.latent.float())
        for s in sessions.values():
            s.close()
        row = {}
        for c in (False, True):
            steady = times[c][2:]
            row["compiled" if c else "eager"] = {
                "denoise_ms": 1e3 * statistics.median(t["denoise"] for t in steady),
                "decode_ms": 1e3 * statistics.median(t["vae_decode"] for t in steady),
                "block_ms": 1e3 * statistics.median(t["wall"] for t in steady),
                "first_block_s": times[c][0]["wall"]}
        e, c = torch.cat(lat[False]), torch.cat(lat[True])
        row["denoise_speedup"] = row["eager"]["denoise_ms"] / row["compiled"]["denoise_ms"]
        row["latent_rel_diff"] = ((c - e).norm() / e.norm()).item()
        out["presets"][preset] = row
        print(f"{preset}: denoise eager {row['eager']['denoise_ms']:.0f} ms vs compiled "
              f"{row['compiled']['denoise_ms']:.0f} ms per block ({row['denoise_speedup']:.2f}x); first block "
              f"{row['eager']['first_block_s']:.1f} s vs {row['compiled']['first_block_s']:.1f} s (compiling); "
              f"latent rel diff {row['latent_rel_diff']:.2e}", flush=True)
    import os

    out["load_average_1m"] = os.getloadavg()[0]
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
