"""Point-to-point transport for the TPP ring: fixed-layout packets, double-buffered channels,
and waits that always end (a timeout, a lost peer or an abort), never hang.

Why a helper thread per pending operation: gloo's p2p `Work.is_completed()` only turns true
inside `wait()`, and a `wait(timeout)` that expires leaves the tcp pair unusable, so neither can
poll. Each posted isend/irecv therefore gets a daemon thread that blocks in `wait()` (the GIL is
released there) and signals one per-process condition; the rank's own thread waits on that
condition with a deadline. A peer that exits closes its sockets, and gloo fails the pending
operation at once ("Connection closed by peer"), which is reported as `PeerLost`.

Other gloo facts this file relies on (checked on torch 2.13): connections must be settled by a
barrier right after `init_process_group` (p2p sent before that can stall); a `Work` object
that is dropped before completion cancels its send, so every Work is kept until done;
outstanding receives with the same (source, tag) are matched in the order they were posted.
Any-source receives are not used.
"""
from __future__ import annotations

import datetime
import os
import threading
import time
from typing import Callable

import torch
import torch.distributed as dist

SIGNAL = threading.Condition()  # notified whenever a pending op finishes (and by audio pushes)


class TPPError(RuntimeError):
    """A pipeline rank failed, timed out, lost a peer or was aborted. `rank`: the rank at
    fault where known (-1 otherwise); rank 0 names it in its ABORT."""

    def __init__(self, msg: str = "", rank: int = -1):
        super().__init__(msg)
        self.rank = rank


class TPPTimeout(TPPError):
    pass


class PeerLost(TPPError):
    pass


class TPPAborted(TPPError):
    pass


def backend() -> str:
    """nccl for CUDA tensors where CUDA is available (control stays on gloo), gloo otherwise."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init(rank: int, world: int, addr: str | None, port: int | None, timeout: float) -> None:
    """Join the ring's process group and settle every connection (barrier). addr None: env://
    (torchrun's store)."""
    if dist.is_initialized():
        raise TPPError("torch.distributed is already initialised in this process: one TPP ring per process")
    method = "env://" if addr is None else f"tcp://{addr}:{port}"
    dist.init_process_group(backend(), init_method=method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def notify() -> None:
    with SIGNAL:
        SIGNAL.notify_all()


class Pending:
    """One posted isend/irecv, waited on by a daemon thread."""

    def __init__(self, work, what: str, peer: int, device: torch.device = torch.device("cpu")):
        self.work, self.what, self.peer, self.cuda = work, what, peer, device.type == "cuda"
        self.error: BaseException | None = None
        self.done = False
        self.finished_at = 0.0
        threading.Thread(target=self._run, daemon=True, name=f"tpp-{what}").start()

    def _run(self) -> None:
        try:
            if self.cuda:  # nccl: wait() only orders streams (done by the owner in take/acquire)
                while not self.work.is_completed():
                    time.sleep(1e-4)
            else:
                self.work.wait()
        except BaseException as exc:  # reported to the owning thread by check()
            self.error = exc
        with SIGNAL:
            self.done, self.finished_at = True, time.monotonic()
            SIGNAL.notify_all()

    def check(self) -> None:
        if self.cuda and self.error is None:
            self.work.wait()  # make the caller's stream wait for the nccl transfer
        if self.error is not None:
            msg = _short(self.error)
            if "Connection" in msg or "Broken pipe" in msg:
                raise PeerLost(f"lost rank {self.peer} during {self.what}: it exited or crashed ({msg})", self.peer)
            raise PeerLost(f"{self.what} with rank {self.peer} failed: {msg}", self.peer)


def wait_until(pred: Callable[[], bool], deadline: float, what: str, watch=()) -> None:
    """Block until pred() (checked under SIGNAL); raise TPPTimeout at `deadline` (monotonic) and
    PeerLost as soon as any watched Pending failed."""
    with SIGNAL:
        while True:
            for p in watch:
                if p is not None and p.done:
                    p.check()
            if pred():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TPPTimeout(f"timed out waiting for {what}")
            SIGNAL.wait(min(left, 0.25))


class Packet:
    """A fixed message layout: named tensors packed into one uint8 buffer (8-byte aligned), so
    a block travels as one message with no shape header."""

    def __init__(self, fields: dict[str, tuple[tuple[int, ...], torch.dtype]], device="cpu"):
        self.fields, self.device = fields, torch.device(device)
        self.offsets, off = {}, 0
        for name, (shape, dtype) in fields.items():
            n = dtype.itemsize
            for s in shape:
                n *= s
            self.offsets[name] = (off, n)
            off += -(-n // 8) * 8
        self.nbytes = off

    def alloc(self) -> torch.Tensor:
        return torch.zeros(self.nbytes, dtype=torch.uint8, device=self.device)

    def views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, (shape, dtype) in self.fields.items():
            off, n = self.offsets[name]
            out[name] = buf[off:off + n].view(dtype).view(shape)
        return out


def _short(exc: BaseException) -> str:
    """gloo's message without its source path and boilerplate advice."""
    msg = str(exc).split("\n")[0].split(". This is typically")[0]
    return msg.split("] ", 1)[1] if msg.startswith("[") and "] " in msg else msg


def _posted(op, buf: torch.Tensor, peer: int, tag: int, what: str):
    """dist.isend / dist.irecv; a peer whose connection is already gone raises PeerLost here."""
    try:
        return op(buf, peer, tag=tag)
    except RuntimeError as exc:
        raise PeerLost(f"lost rank {peer} while posting {what}: it exited or crashed ({_short(exc)})", peer) from None


class RecvChannel:
    """Receives from one peer on one tag into `slots` pre-posted buffers (double buffering: the
    next message lands while the current one is used). take() -> views; release() re-posts."""

    def __init__(self, src: int, tag: int, packet: Packet, what: str, slots: int = 2):
        self.src, self.tag, self.packet, self.what = src, tag, packet, what
        self.bufs = [packet.alloc() for _ in range(slots)]
        self.views = [packet.views(b) for b in self.bufs]
        self.pending: list[Pending | None] = [None] * slots
        self.next = 0
        for i in range(slots):
            self._post(i)

    def _post(self, i: int) -> None:
        self.pending[i] = Pending(_posted(dist.irecv, self.bufs[i], self.src, self.tag, self.what), self.what,
                                  self.src, self.packet.device)

    @property
    def head(self) -> Pending | None:
        return self.pending[self.next]

    def ready(self) -> bool:
        p = self.head
        return p is not None and p.done

    def take(self) -> tuple[int, dict[str, torch.Tensor]]:
        p = self.head
        p.check()
        slot = self.next
        self.next = (self.next + 1) % len(self.bufs)
        return slot, self.views[slot]

    def release(self, slot: int, repost: bool = True) -> None:
        self.pending[slot] = None
        if repost:
            self._post(slot)

    def posted(self) -> int:
        return sum(p is not None for p in self.pending)


class SendChannel:
    """Sends to one peer on one tag from `slots` buffers; acquire() waits (with a deadline) until
    the oldest buffer's previous send completed."""

    def __init__(self, dst: int, tag: int, packet: Packet, what: str, slots: int = 2):
        self.dst, self.tag, self.packet, self.what = dst, tag, packet, what
        self.bufs = [packet.alloc() for _ in range(slots)]
        self.views = [packet.views(b) for b in self.bufs]
        self.pending: list[Pending | None] = [None] * slots
        self.next = 0
        self.bytes_sent = 0
        self.wait_s = 0.0

    def free(self) -> bool:
        p = self.pending[self.next]
        return p is None or p.done

    def acquire(self, deadline: float, watch=()) -> dict[str, torch.Tensor]:
        t = time.monotonic()
        p = self.pending[self.next]
        if p is not None:
            wait_until(lambda: p.done, deadline, f"{self.what} to rank {self.dst} (send buffer)", (p, *watch))
            p.check()
        self.wait_s += time.monotonic() - t
        return self.views[self.next]

    def send(self) -> None:
        i = self.next
        self.pending[i] = Pending(_posted(dist.isend, self.bufs[i], self.dst, self.tag, self.what), self.what,
                                  self.dst, self.packet.device)
        self.bytes_sent += self.packet.nbytes
        self.next = (i + 1) % len(self.bufs)

    def flush(self, deadline: float, watch=()) -> None:
        live = [p for p in self.pending if p is not None]
        wait_until(lambda: all(p.done for p in live), deadline, f"{self.what} to rank {self.dst} (flush)",
                   (*live, *watch))


def exit_process(code: int) -> None:
    """Leave a worker at once: pending gloo waits in daemon threads must not hold the exit."""
    for stream in (os.sys.stdout, os.sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
