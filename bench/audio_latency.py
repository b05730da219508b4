"""Streaming wav2vec2 latency (issue 17 item 4): from the last sample of block n's audio to
block n's features, per block, with audio arriving in real time.

    .venv/bin/python bench/audio_latency.py [--folder /tmp/w2v_large_random] [--seconds 6]
        [--window 2.0 --lookahead 0.16] [--chunk-ms 40] [--threads 2] [--json out.json]

A thread pushes speech (assets/example/speech.wav, looped) in `--chunk-ms` chunks at wall-clock
pace, as a microphone or a TTS would; the main thread takes each block's features as soon as the
stream says they are ready (`WindowedAudioStream.blocks_ready`). Per block: the wait for the
lookahead audio (ready - block end, ~lookahead_s by construction), the wav2vec2 compute, and the
total latency (features - block end). The default folder is the random wav2vec2 with the real
large-xlsr-53 configuration that bench/audio_window.py builds (the 14B feature size: 25 layers x
1024); with real weights the compute is the same. Also counts the FLOPs of one block's window
(torch.utils.flop_counter) for the GPU model in bench/TPP_MODEL.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def speech16k(path: str, seconds: float) -> np.ndarray:
    from liveavatar_rt.benchmark.e2e import looped_audio

    return looped_audio(path, seconds)


def pusher(stream, pcm: np.ndarray, chunk: int, t0: float, pushed_at: list) -> None:
    """Push `pcm` in `chunk`-sample pieces at real-time pace; pushed_at[i] = time sample
    (i + 1) * chunk - 1 was pushed (relative to t0)."""
    for i in range(0, len(pcm), chunk):
        due = t0 + (i + chunk) / 16000
        time.sleep(max(0.0, due - time.perf_counter()))
        stream.push(pcm[i:i + chunk], 16000)
        pushed_at.append(time.perf_counter() - t0)
    stream.end()


def window_gflop(features, window_samples: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        features(np.zeros(window_samples, np.float32) + 0.01)
    return fc.get_total_flops() / 1e9


def main() -> None:
    from bench.audio_window import large_random_folder
    from liveavatar_rt.audio import Wav2VecFeatures
    from liveavatar_rt.audio.windowed import AudioWindow, WindowedAudioStream

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default="/tmp/w2v_large_random")
    ap.add_argument("--audio", default="assets/example/speech.wav")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--window", type=float, default=AudioWindow.window_s)
    ap.add_argument("--lookahead", type=float, default=AudioWindow.lookahead_s)
    ap.add_argument("--chunk-ms", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    features = Wav2VecFeatures(large_random_folder(Path(a.folder)))
    stream = WindowedAudioStream(features, AudioWindow(a.window, a.lookahead))
    features(np.zeros(stream.window_samples, np.float32))  # warm-up (allocator, oneDNN primitives)
    pcm = speech16k(a.audio, a.seconds)
    chunk = 16 * a.chunk_ms
    pushed_at: list[float] = []
    t0 = time.perf_counter()
    th = threading.Thread(target=pusher, args=(stream, pcm, chunk, t0, pushed_at), daemon=True)
    th.start()
    rows, n = [], 0
    n_blocks = len(pcm) // stream.block_samples
    while n < n_blocks:
        if stream.blocks_ready() <= n:
            time.sleep(0.002)
            continue
        c0 = time.perf_counter()
        stream.block_features(n)
        done = time.perf_counter() - t0
        end_s = (n + 1) * stream.block_samples / 16000  # block n's last sample, in stream time
        need = (n + 1) * stream.block_samples + stream.lookahead_samples  # samples the features need
        ready = pushed_at[min(len(pushed_at), -(-need // chunk)) - 1]  # when the last of them arrived
        rows.append({"block": n, "lookahead_wait_s": ready - end_s, "queue_s": c0 - t0 - ready,
                     "compute_s": time.perf_counter() - c0, "latency_s": done - end_s})
        stream.release(n)
        n += 1
    th.join()
    gflop = window_gflop(features, stream.window_samples)
    print(f"wav2vec2 {a.folder} ({features.layers} layers x {features.dim}), window {a.window} s, lookahead "
          f"{a.lookahead} s, {a.chunk_ms} ms chunks in real time, {a.threads} threads; {gflop:.1f} GFLOP per window")
    print(f"{'block':>5s} {'lookahead wait s':>16s} {'queued s':>8s} {'wav2vec2 s':>10s} {'latency s':>9s}")
    for r in rows:
        print(f"{r['block']:5d} {r['lookahead_wait_s']:16.3f} {r['queue_s']:8.3f} {r['compute_s']:10.3f} "
              f"{r['latency_s']:9.3f}")
    lat = np.array([r["latency_s"] for r in rows])
    print(f"latency: first block {lat[0]:.3f} s, median {np.median(lat):.3f} s, max {lat.max():.3f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "gflop_per_window": gflop, "blocks": rows}, indent=1))


if __name__ == "__main__":
    main()
