"""Generate a directory of training clips.

    python -m recipes.tiny.generate --out data/tiny --clips 3000 --seconds 4 --size 128 \
        --workers 2 --seed 0

Clip i has seed (and identity seed) `seed + i` and is written to clip_<seed>.npz (see store.py).
Resumable: clips whose file exists are skipped (files appear atomically). Deterministic: the
same seed gives identical arrays (and file bytes). When every clip exists, index.json lists
them: {"fps", "sample_rate", "size", "seconds", "heldout_start", "clips": [{"file", "seed",
"identity_seed", "n_frames", "snr_db", "voice"}]}.
Identity seeds >= clips.HELDOUT_START are held out for evaluation; asking for them is an error.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .clips import FPS, HELDOUT_START, make_clip
from .speech import SAMPLE_RATE
from .store import load_meta, save_clip


def clip_path(out: Path, seed: int) -> Path:
    return out / f"clip_{seed:07d}.npz"


def _record(path: Path, meta: dict) -> dict:
    return {"file": path.name, "seed": meta["seed"], "identity_seed": meta["identity_seed"],
            "n_frames": meta["n_frames"], "snr_db": meta["snr_db"], "voice": meta["voice"]}


def _work(job):
    seed, out, size, seconds = job
    path = clip_path(Path(out), seed)
    if path.exists():
        return _record(path, load_meta(path)), False
    clip = make_clip(seed, size=size, seconds=seconds)
    save_clip(clip, path)
    return _record(path, clip.meta), True


def generate(out, clips: int, seconds: float = 4.0, size: int = 128, workers: int = 2,
             seed: int = 0, progress: bool = True) -> dict:
    """Write `clips` clips into `out` (skipping existing ones) and the index. -> index dict."""
    out = Path(out)
    if clips <= 0:
        raise ValueError(f"--clips must be positive, got {clips}")
    if seed < 0 or seed + clips > HELDOUT_START:
        raise ValueError(f"seeds [{seed}, {seed + clips}) overlap the held-out identities "
                         f"(seeds >= {HELDOUT_START}); pick a lower --seed or fewer --clips")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.npz.tmp*"):  # leftovers of a killed run
        stale.unlink()
    jobs = [(seed + i, str(out), size, seconds) for i in range(clips)]
    t0 = time.time()
    made = 0
    records = []
    bar = tqdm(total=clips, disable=not progress, unit="clip", smoothing=0.05)
    if workers <= 1:
        it = map(_work, jobs)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers)
        it = pool.imap(_work, jobs, chunksize=4)
    try:
        for rec, new in it:
            records.append(rec)
            made += new
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.time() - t0
    index = {"fps": FPS, "sample_rate": SAMPLE_RATE, "size": size, "seconds": seconds,
             "heldout_start": HELDOUT_START, "clips": records}
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / "index.json")
    if progress and made:
        print(f"generated {made} clips in {elapsed:.1f} s "
              f"({made / elapsed * 60:.1f} clips/min), {clips - made} already present",
              file=sys.stderr)
    return index


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--clips", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    generate(a.out, a.clips, a.seconds, a.size, a.workers, a.seed, progress=not a.quiet)


if __name__ == "__main__":
    main()
