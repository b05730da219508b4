"""End-to-end TPP benchmark: the tiny preset on 1, 2 and 4 DiT ranks (+ a VAE rank), gloo on
127.0.0.1, against the single-process engine in the same run.

    .venv/bin/python bench/tpp.py [--seconds 6] [--area 4096] [--layouts 1+1,2+1,4+1]

Per layout: time to first frame (session() -> first Block, image encode included), steady block
interval (mean gap between blocks once the pipeline is full) and FPS, per-rank compute and
wait seconds per block, bytes each rank sends per block, and the pipeline overhead: steady
interval / slowest rank's compute per block - 1 (communication + scheduling; 0 is a perfect
pipeline). On a 2-core machine the ranks share the cores, so more ranks cannot be faster here:
the table shows the overhead of the ring, not the speed-up (see bench/TPP_MODEL.md for that).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)  # before any parallel region: the ring forks

from liveavatar_rt.engine import Pipeline  # noqa: E402
from liveavatar_rt.parallel import RingOptions  # noqa: E402
from tests.parallel.ring_run import SR, face, speech  # noqa: E402


def _time_blocks(sess, pcm) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    sess.push_audio(pcm, SR)
    sess.end_audio()
    arrivals = [time.perf_counter() - t0 for _ in sess.frames(timeout=300)]
    return arrivals[0], arrivals


def _steady(arrivals: list[float], skip: int) -> float:
    """Mean gap between blocks once the pipeline is full (the first `skip` blocks excluded)."""
    a = arrivals[skip:]
    return (a[-1] - a[0]) / (len(a) - 1) if len(a) > 1 else float("nan")


def single_process(area: int, pcm) -> dict:
    pipe = Pipeline.from_pretrained("tiny", seed=0, quiet=True, max_area=area)
    pipe.generate(face(), pcm[:SR], SR)  # warm-up
    t0 = time.perf_counter()
    sess = pipe.session(face(), seed=1)
    setup = time.perf_counter() - t0
    ttff, arrivals = _time_blocks(sess, pcm)
    sess.close()
    interval = _steady(arrivals, 1)
    return {"layout": "1 proc", "ttff": setup + ttff, "interval": interval, "fps": 12 / interval,
            "ranks": [("all", interval, 0.0, 0)], "overhead": 0.0}


def ring(layout: str, area: int, pcm) -> dict:
    with Pipeline.from_pretrained("tiny", seed=0, quiet=True, max_area=area, layout=layout,
                                  ring=RingOptions(timeout=60, start_method="fork")) as pipe:
        with pipe.session(face(), seed=0) as s:  # warm-up session
            s.push_audio(pcm[:SR], SR)
            s.end_audio()
            list(s.frames(timeout=300))
        t0 = time.perf_counter()
        sess = pipe.session(face(), seed=1)
        setup = time.perf_counter() - t0
        ttff, arrivals = _time_blocks(sess, pcm)
        sess.close()
        front = sess.stats
    reports = pipe.ring.reports
    stats = [front] + [reports[k]["stats"][-1] for k in sorted(reports)]
    ranks = []
    for k, st in enumerate(stats):
        n = max(st["blocks"], 1)
        wait = st.get("wait_in_s", 0.0) + st.get("wait_out_s", 0.0)
        ranks.append((k, st["compute_s"] / n, wait / n, st.get("bytes_sent", 0) / n))
    interval = _steady(arrivals, len(stats))
    slowest = max(c for _, c, _, _ in ranks)
    return {"layout": layout, "ttff": setup + ttff, "interval": interval, "fps": 12 / interval, "ranks": ranks,
            "overhead": interval / slowest - 1}


def _pong(rank: int, port: int, nbytes: int, n: int) -> None:
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    dist.barrier()
    buf = torch.zeros(nbytes, dtype=torch.uint8)
    for _ in range(n):
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        else:
            dist.recv(buf, 0)
            dist.send(buf, 0)
    dist.destroy_process_group()


def hop_seconds(nbytes: int, n: int = 50) -> float:
    """One-way gloo transfer time of an `nbytes` message on 127.0.0.1 (ping-pong / 2)."""
    import torch.multiprocessing as mp

    from liveavatar_rt.parallel.launch import free_port

    port = free_port()
    child = mp.get_context("fork").Process(target=_pong, args=(1, port, nbytes, n + 5))
    child.start()
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    dist.barrier()
    buf = torch.zeros(nbytes, dtype=torch.uint8)
    for i in range(n + 5):
        if i == 5:
            t0 = time.perf_counter()
        dist.send(buf, 1)
        dist.recv(buf, 1)
    dt = (time.perf_counter() - t0) / n / 2
    dist.destroy_process_group()
    child.join(30)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="audio length (0.48 s per block)")
    ap.add_argument("--area", type=int, default=64 * 64, help="video area in pixels (64*64: 8x8 latent)")
    ap.add_argument("--layouts", default="1+1,2+1,4+1")
    a = ap.parse_args()
    pcm = speech(a.seconds)
    rows = [single_process(a.area, pcm)] + [ring(lay, a.area, pcm) for lay in a.layouts.split(",")]
    print(f"\ntiny preset, {a.area} px video, {a.seconds:g} s audio, torch threads 1 per rank, "
          f"{torch.get_num_threads()} thread front, CPU gloo")
    print(f"{'layout':8s} {'TTFF s':>7s} {'block s':>8s} {'FPS':>6s} {'overhead':>9s}   "
          "per rank: compute s/block | wait s/block | bytes sent/block")
    for row in rows:
        per = "  ".join(f"r{k}: {c:.3f}|{w:.3f}|{b / 1024:.0f}K" for k, c, w, b in row["ranks"])
        print(f"{row['layout']:8s} {row['ttff']:7.2f} {row['interval']:8.3f} {row['fps']:6.1f} "
              f"{row['overhead']:8.0%}   {per}")
    # the transfers themselves: one-way gloo time of each message a block sends, per hop
    print("\ncommunication per block (gloo, 127.0.0.1, one-way time of each message, measured by ping-pong):")
    for row in rows[1:]:
        total = sum(hop_seconds(int(b)) for k, _, _, b in row["ranks"] if b)
        compute = sum(c for _, c, _, _ in row["ranks"])
        print(f"{row['layout']:8s} {total * 1e3:6.2f} ms of transfers per block = {total / compute:5.1%} of the "
              f"block's compute ({compute:.3f} s over all ranks)")


if __name__ == "__main__":
    main()
