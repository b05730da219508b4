"""Real-time streaming benchmark: drive `liveavatar-rt serve` like a client over a socket.

    .venv/bin/python bench/serve_latency.py                   # starts its own server process (tiny)
    .venv/bin/python bench/serve_latency.py --url ws://127.0.0.1:8000/ws   # an already running one

Two runs on one server process, each a fresh session with the example portrait (128x128 with
the tiny preset):
  realtime  speech sent in 40 ms chunks paced by the wall clock (a microphone / TTS stream):
            TTFF = first audio chunk sent -> first video segment received (client clock);
            sustained FPS = frames after the first segment / time from first to last segment;
            lag = segment arrival - the moment its block's audio had been fully sent (stays flat
            when the server keeps up; grows when it does not).
  fast      all audio at once: throughput FPS = what the server could sustain (the headroom).
Prints one line per run plus the machine load (timings are noisy on a shared machine) and,
for a server it started, the server's CPU time per frame (a figure other load hardly moves).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from liveavatar_rt.io.audio_file import read_audio  # noqa: E402
from liveavatar_rt.serve.client import StreamClient  # noqa: E402

CHUNK_S = 0.04
BLOCK_S = 12 / 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, tpp: str | None, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "liveavatar_rt", "serve", "--model", model, "--port", str(port),
           "--log-level", "warning"] + (["--tpp", tpp] if tpp else [])
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return proc, f"ws://127.0.0.1:{port}/ws"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up within 180 s")


def cpu_seconds(pid: int | None) -> float | None:
    """user + system CPU time of a process (all its threads), from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(ws_url: str, timeout: float = 30.0) -> None:
    """Until the previous session's slot is free (teardown runs just after "done")."""
    health = ws_url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/ws", 1)[0] + "/healthz"
    deadline = time.monotonic() + timeout
    while json.loads(urllib.request.urlopen(health, timeout=5).read())["sessions"] > 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"the server still has sessions open after {timeout} s")
        time.sleep(0.1)


def run(url: str, image: bytes, pcm: np.ndarray, rate: int, realtime: bool, token: str | None) -> dict:
    chunk = int(CHUNK_S * rate)
    sent_at: list[float] = []  # when each chunk's last sample was sent
    with StreamClient(url, token=token, timeout=60) as c:
        c.start(image, sample_rate=rate)

        def feed():
            t0 = time.monotonic()
            for i in range(0, len(pcm), chunk):
                if realtime:
                    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                c.send_audio(pcm[i:i + chunk])
                sent_at.append(time.monotonic())
            c.end()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        segments = list(c.segments(timeout=60))
        feeder.join(10)
    media = [s for s in segments if s.meta["frames"] > 0]
    first_audio = sent_at[0]
    ttff = media[0].received_at - first_audio
    frames = sum(s.meta["frames"] for s in media)
    span = media[-1].received_at - media[0].received_at
    sustained = (frames - media[0].meta["frames"]) / span if span > 0 else float("nan")
    lags = []
    for s in media:  # block b needs audio up to (b + 1) * 0.48 s
        k = min(len(sent_at) - 1, int(np.ceil((s.meta["block"] + 1) * BLOCK_S / CHUNK_S)) - 1)
        lags.append(s.received_at - sent_at[k])
    n = max(1, len(lags) // 4)
    server = c.done["stats"]
    return {"mode": "realtime" if realtime else "fast", "audio_s": round(len(pcm) / rate, 2), "frames": frames,
            "ttff_s": round(ttff, 3), "server_ttff_s": server["ttff_s"], "sustained_fps": round(sustained, 2),
            "lag_first_quarter_s": round(float(np.mean(lags[:n])), 3),
            "lag_last_quarter_s": round(float(np.mean(lags[-n:])), 3), "lag_max_s": round(max(lags), 3),
            "dropped": server["dropped"], "late": server["late"], "setup_s": c.ready["setup_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="ws://host:port/ws of a running server (default: start one)")
    ap.add_argument("--token", default=None)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tpp", default=None, help="start the server with --tpp LAYOUT")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the started server")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per run (the example speech, looped)")
    ap.add_argument("--image", default=str(ROOT / "assets/example/portrait.png"))
    ap.add_argument("--audio", default=str(ROOT / "assets/example/speech.wav"))
    ap.add_argument("--modes", default="realtime,fast")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    pcm, rate = read_audio(args.audio)
    pcm = np.tile(pcm, int(np.ceil(args.seconds * rate / len(pcm))))[:int(args.seconds * rate)]
    image = Path(args.image).read_bytes()
    proc, url = (None, args.url) if args.url else start_server(args.model, args.tpp, args.threads)
    results = []
    try:
        load0 = os.getloadavg()
        for mode in args.modes.split(","):
            wait_idle(url)
            cpu0 = cpu_seconds(proc.pid if proc else None)
            r = run(url, image, pcm, rate, mode == "realtime", args.token)
            cpu1 = cpu_seconds(proc.pid if proc else None)
            r["load_1min"] = round(os.getloadavg()[0], 2)
            if cpu0 is not None and cpu1 is not None:
                # CPU time the server spent per frame: unlike wall time it hardly depends on what
                # else runs on the machine (except cache/SMT effects and OpenMP spinning)
                r["server_cpu_ms_per_frame"] = round(1000 * (cpu1 - cpu0) / r["frames"], 2)
            results.append(r)
            print(json.dumps(r))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(f"machine load (1 min) before: {load0[0]:.2f}; after each run: {[r['load_1min'] for r in results]}")
    for r in results:
        print(f"{r['mode']:8s} TTFF {r['ttff_s']:.2f} s (server {r['server_ttff_s']} s)  sustained {r['sustained_fps']:.1f} fps"
              f"  lag {r['lag_first_quarter_s']:.2f} -> {r['lag_last_quarter_s']:.2f} s (max {r['lag_max_s']:.2f})"
              f"  dropped {r['dropped']} late {r['late']}  setup {r['setup_s']} s"
              + (f"  server CPU {r['server_cpu_ms_per_frame']} ms/frame" if "server_cpu_ms_per_frame" in r else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load0, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
