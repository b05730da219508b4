"""Start a ring: `spawn_local` (this process is rank 0, the workers are spawned children on
127.0.0.1) or `run_from_env` (one process per rank under torchrun).

    with spawn_local("4+1", model="tiny", seed=0) as ring:      # gloo on this machine
        video = ring.generate(image, pcm, 16000, seed=0)          # == Pipeline.generate
        with ring.session(image, seed=1) as sess: ...             # TPPSession

Every rank loads the same model (`Pipeline.from_pretrained(model, seed=...)`: the same seeded
weights for the tiny preset). A failing ring never hangs the caller: ranks end within
`timeout`, and close() kills any child still alive after a grace period.
"""
from __future__ import annotations

import dataclasses

import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.multiprocessing as mp

from . import comm
from .front import FrontRing
from .layout import Layout
from .worker import RankOptions, run_worker


@dataclass(kw_only=True)  # keyword-only: a new field can never shift a positional call
class RingConfig:
    model: str = "tiny"
    seed: int = 0  # weight seed of the tiny preset (the same on every rank)
    dtype: torch.dtype = torch.bfloat16
    max_area: int | None = None  # rank 0's generation area (None: the model's default)
    timeout: float = 30.0
    init_timeout: float = 120.0
    threads: int = 1  # torch threads per spawned rank
    fault: dict = field(default_factory=dict)  # test hook, see worker.RankOptions
    cuda_graphs: bool | None = None  # StreamConfig.cuda_graphs on every rank (None: on where CUDA)


def _device(local_rank: int) -> str:
    return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"


def _load(cfg: RingConfig, device: str):
    from ..engine.pipeline import Pipeline

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    pipe = Pipeline.from_pretrained(cfg.model, device=device, dtype=cfg.dtype, seed=cfg.seed, quiet=True)
    if cfg.max_area is not None:
        pipe.max_area = cfg.max_area
    if cfg.cuda_graphs is not None:
        pipe.stream = dataclasses.replace(pipe.stream, cuda_graphs=cfg.cuda_graphs)
    return pipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, layout: str, port: int, cfg: RingConfig, conn, pipe=None) -> None:
    def report(ok: bool, text: str, stats=None) -> None:
        try:
            conn.send({"rank": rank, "ok": ok, "error": text, "stats": stats or []})
        except (OSError, ValueError):
            pass

    code = 1
    try:
        torch.set_num_threads(cfg.threads)
        lay = Layout.parse(layout)
        pipe = pipe if pipe is not None else _load(cfg, _device(rank))
        comm.init(rank, lay.world, "127.0.0.1", port, cfg.init_timeout)
        code = run_worker(rank, lay, pipe, RankOptions(cfg.timeout, cfg.fault), report)
    except BaseException as exc:  # before the ring existed: tell the parent why
        text = f"rank {rank} failed to start: {type(exc).__name__}: {exc}"
        print(f"liveavatar_rt.parallel: {text}", file=sys.stderr)
        report(False, text)
    comm.exit_process(code)


class LocalRing(FrontRing):
    """A FrontRing whose workers are children of this process; close() also reaps them.
    `reports[rank]` after close(): {"ok", "error", "stats", "exitcode"}."""

    def __init__(self, pipe, layout: Layout, cfg: RingConfig, procs, conns):
        self.procs, self.conns, self.cfg = procs, conns, cfg
        self.reports: dict[int, dict] = {}
        super().__init__(pipe, layout, timeout=cfg.timeout)

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

    def __enter__(self) -> "LocalRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def spawn_local(layout: str | Layout = "4+1", model: str = "tiny", seed: int = 0,
                dtype: torch.dtype = torch.bfloat16, max_area: int | None = None, timeout: float = 30.0,
                init_timeout: float = 120.0, threads: int = 1, fault: dict | None = None,
                start_method: str = "spawn", cuda_graphs: bool | None = None) -> LocalRing:
    """Start ranks 1..W-1 as child processes (gloo on 127.0.0.1); this process becomes rank 0
    (the front). Returns the ring (a context manager); its session() gives TPPSessions.

    start_method "spawn" (default, always safe): each child imports torch and loads the model.
    "fork" (CPU only): the model is loaded once here and the children inherit it, which starts
    a ring several times faster; use it only from a process that has not started CUDA or
    OpenMP worker threads (e.g. torch.set_num_threads(1) before any work)."""
    lay = Layout.parse(layout)
    cfg = RingConfig(model=model, seed=seed, dtype=dtype, max_area=max_area, timeout=timeout,
                     init_timeout=init_timeout, threads=threads, fault=dict(fault or {}), cuda_graphs=cuda_graphs)
    if start_method == "fork" and torch.cuda.is_available():
        raise ValueError("start_method='fork' cannot be used with CUDA: use 'spawn'")
    port = free_port()
    ctx = mp.get_context(start_method)
    pipe = _load(cfg, _device(0)) if start_method == "fork" else None
    procs, conns = {}, {}
    for rank in range(1, lay.world):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(rank, str(lay), port, cfg, child, pipe), daemon=True,
                        name=f"liveavatar-tpp-rank{rank}")
        p.start()
        child.close()
        procs[rank], conns[rank] = p, parent
    try:
        pipe = pipe if pipe is not None else _load(cfg, _device(0))
        _init_watching(lay.world, port, cfg.init_timeout, procs, conns)
        return LocalRing(pipe, lay, cfg, procs, conns)
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
            raise comm.TPPError(f"rank {r} died while the ring was forming: {why}")
        if time.monotonic() > deadline:
            raise comm.TPPTimeout(f"the ring did not form within {timeout:g} s")
    if "error" in box:
        raise comm.TPPError(f"rank 0 could not join the ring: {box['error']}") from box["error"]


def run_from_env(layout: str | Layout, cfg: RingConfig, front) -> NoReturn:
    """torchrun: RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT / LOCAL_RANK from the environment.
    Rank 0 calls front(ring) and then shuts the ring down; the others serve until SHUTDOWN.
    Every rank then leaves its process at once (`comm.exit_process`), rank 0 with front's return
    code (1 if it raised, after printing the traceback): daemon threads still blocked in gloo
    waits make a normal interpreter exit abort (SIGABRT, "terminate called without an active
    exception"), which turned a finished run into a failed one under torchrun."""
    lay = Layout.parse(layout)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != lay.world:
        raise SystemExit(f"layout {lay} needs {lay.world} processes, torchrun started {world}")
    pipe = _load(cfg, _device(int(os.environ.get("LOCAL_RANK", rank))))
    comm.init(rank, world, None, None, cfg.init_timeout)
    if rank != 0:
        comm.exit_process(run_worker(rank, lay, pipe, RankOptions(cfg.timeout, cfg.fault)))
    ring = FrontRing(pipe, lay, timeout=cfg.timeout)
    try:
        code = front(ring)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        ring.close()
        comm.shutdown()
    comm.exit_process(int(code or 0))
