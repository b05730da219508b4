"""Start a ring for a Pipeline: `start_ring` spawns the other ranks as local processes (gloo on
127.0.0.1), or joins the ranks torchrun started. `Pipeline.from_pretrained(..., layout="4+1")`
calls it; users do not.

Every rank loads the same model with the same `from_pretrained` arguments (the same seeded
weights for the tiny preset). A failing ring never hangs the caller: ranks end within
`timeout`, and close() kills any child still alive after a grace period.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from . import comm
from .front import FrontRing
from .layout import Layout
from .worker import run_worker


@dataclass(kw_only=True)  # keyword-only: a new field can never shift a positional call
class RingOptions:
    timeout: float = 30.0  # seconds any rank may wait without news
    init_timeout: float = 120.0  # seconds for the ring to form
    threads: int = 1  # torch threads per spawned rank
    # "spawn" (always safe: each child imports torch and loads the model) or "fork" (CPU only:
    # the children inherit rank 0's loaded model, several times faster to start; only from a
    # process that has not started CUDA or OpenMP worker threads, e.g. torch.set_num_threads(1)
    # before any work)
    start_method: str = "spawn"
    # "auto": join torchrun's ranks when RANK is set, else spawn; "spawn"; "torchrun"
    launch: str = "auto"

    def torchrun(self) -> bool:
        if self.launch not in ("auto", "spawn", "torchrun"):
            raise ValueError(f"launch {self.launch!r}: use 'auto', 'spawn' or 'torchrun'")
        return self.launch == "torchrun" or (self.launch == "auto" and "RANK" in os.environ)


def rank_device(device: str, rank: int) -> str:
    """The device of `rank` for a pipeline loaded on `device`: one GPU per rank on CUDA."""
    if str(device).startswith("cuda"):
        return f"cuda:{rank % torch.cuda.device_count()}"
    return str(device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(load: dict, rank: int):
    from ..engine.pipeline import Pipeline

    device = rank_device(load.get("device", "cpu"), rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return Pipeline.from_pretrained(**dict(load, device=device, quiet=True))


def _child(rank: int, layout: str, port: int, load: dict, opts: RingOptions, conn, pipe=None) -> None:
    def report(ok: bool, text: str, stats=None) -> None:
        try:
            conn.send({"rank": rank, "ok": ok, "error": text, "stats": stats or []})
        except (OSError, ValueError):
            pass

    code = 1
    try:
        torch.set_num_threads(opts.threads)
        lay = Layout.parse(layout)
        pipe = pipe if pipe is not None else _load(load, rank)
        comm.init(rank, lay.world, "127.0.0.1", port, opts.init_timeout)
        code = run_worker(rank, lay, pipe, opts.timeout, report)
    except BaseException as exc:  # before the ring existed: tell the parent why
        text = f"rank {rank} failed to start: {type(exc).__name__}: {exc}"
        print(f"liveavatar_rt.parallel: {text}", file=sys.stderr)
        report(False, text)
    comm.exit_process(code)


class LocalRing(FrontRing):
    """A FrontRing whose workers are children of this process; close() also reaps them.
    `reports[rank]` after close(): {"ok", "error", "stats", "exitcode"}."""

    def __init__(self, pipe, layout: Layout, timeout: float, procs, conns):
        self.procs, self.conns = procs, conns
        self.reports: dict[int, dict] = {}
        super().__init__(pipe, layout, timeout=timeout)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._reap()

    def _reap(self) -> None:
        if self.reports:
            return
        grace = time.monotonic() + self.timeout + 5
        for rank, p in self.procs.items():
            p.join(max(0.0, grace - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for rank, conn in self.conns.items():
            rep = {"rank": rank, "ok": False, "error": "", "stats": []}
            try:
                while conn.poll():
                    rep = conn.recv()
            except (EOFError, OSError):
                pass
            rep["exitcode"] = self.procs[rank].exitcode
            if rep["exitcode"] is not None and rep["exitcode"] < 0 and not rep["error"]:
                rep["error"] = f"rank {rank} was killed (signal {-rep['exitcode']})"
            self.reports[rank] = rep
            conn.close()
        comm.shutdown()


def start_ring(pipe, layout: Layout, load: dict, opts: RingOptions) -> FrontRing:
    """Make this process rank 0 of a ring running `layout`, with `pipe` (already loaded from
    `load`, the from_pretrained keywords every rank uses) as its model. Under torchrun the
    ranks above 0 serve sessions here until SHUTDOWN and then leave their process."""
    if opts.torchrun():
        return _join_torchrun(pipe, layout, opts)
    if opts.start_method not in ("spawn", "fork"):
        raise ValueError(f"start_method {opts.start_method!r}: use 'spawn' or 'fork'")
    if opts.start_method == "fork" and torch.cuda.is_available():
        raise ValueError("start_method='fork' cannot be used with CUDA: use 'spawn'")
    port = free_port()
    ctx = mp.get_context(opts.start_method)
    inherit = pipe if opts.start_method == "fork" else None
    procs, conns = {}, {}
    try:
        for rank in range(1, layout.world):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(rank, str(layout), port, load, opts, child, inherit), daemon=True,
                            name=f"liveavatar-tpp-rank{rank}")
            p.start()
            child.close()
            procs[rank], conns[rank] = p, parent
        _init_watching(layout.world, port, opts.init_timeout, procs, conns)
        return LocalRing(pipe, layout, opts.timeout, procs, conns)
    except BaseException:
        for p in procs.values():
            if p.is_alive():
                p.kill()
            p.join(5)
        if torch.distributed.is_initialized():
            comm.shutdown()
        raise


def _init_watching(world: int, port: int, timeout: float, procs, conns) -> None:
    """comm.init for rank 0, failing fast if a child dies while the ring forms."""
    box: dict = {}

    def run():
        try:
            comm.init(0, world, "127.0.0.1", port, timeout)
        except BaseException as exc:
            box["error"] = exc
        box["done"] = True

    th = threading.Thread(target=run, daemon=True)
    th.start()
    deadline = time.monotonic() + timeout
    while not box.get("done"):
        th.join(0.2)
        dead = [r for r, p in procs.items() if not p.is_alive()]
        if dead and not box.get("done"):
            r = dead[0]
            why = conns[r].recv()["error"] if conns[r].poll() else f"exit code {procs[r].exitcode}"
            raise comm.TPPError(f"rank {r} died while the ring was forming: {why}", r)
        if time.monotonic() > deadline:
            raise comm.TPPTimeout(f"the ring did not form within {timeout:g} s")
    if "error" in box:
        raise comm.TPPError(f"rank 0 could not join the ring: {box['error']}") from box["error"]


def torchrun_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def _join_torchrun(pipe, layout: Layout, opts: RingOptions) -> FrontRing:
    """torchrun: RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the environment. Ranks
    above 0 serve until SHUTDOWN and then leave at once (`comm.exit_process`): daemon threads
    still blocked in gloo waits make a normal interpreter exit abort (SIGABRT). Rank 0 returns
    the ring; its process should leave the same way once the pipeline is closed
    (`python -m liveavatar_rt.parallel` does)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != layout.world:
        raise SystemExit(f"layout {layout} needs {layout.world} processes, torchrun started {world}")
    comm.init(rank, world, None, None, opts.init_timeout)
    if rank != 0:
        comm.exit_process(run_worker(rank, layout, pipe, opts.timeout))
    return FrontRing(pipe, layout, timeout=opts.timeout)
