"""The loop of every rank but the front: wait for a session, run its blocks, repeat.

Every wait has a deadline of `timeout` seconds, extended by rank 0's keepalives (sent every
timeout / 3 while the front is alive, in a session or idle); rank 0 watches the whole
pipeline and sends ABORT when something fails. A rank whose own thread is stuck (in compute,
say) is still ended by an abort: a watchdog thread exits the process if an ABORT is not
taken within a grace period.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Callable

import torch

from .comm import SIGNAL, RecvChannel, SendChannel, TPPAborted, TPPError, TPPTimeout, exit_process, wait_until
from .layout import Layout
from .protocol import (BYE, CONTROL, ERROR, FLAG_END, KEEPALIVE, REPORT, SHUTDOWN, TAG_ABORT, TAG_CONTROL,
                       TAG_DATA, TAG_REPORT, TAG_SESSION, SessionHeader, encode_report, session_tag)
from .stage import SLOTS, Stage


# Called as after_block(rank, block) once a worker has handled a block: a seam for the tests'
# fault injection (tests/parallel/ring_run.py sets it before the ring forks), None in production.
after_block: Callable[[int, int], None] | None = None


class WorkerWaiter:
    """Waits for a condition while handling control messages from rank 0."""

    def __init__(self, rank: int, layout: Layout, timeout: float):
        self.rank, self.layout, self.timeout = rank, layout, timeout
        self.ctrl = RecvChannel(0, TAG_CONTROL, CONTROL, "control", slots=1)
        self.abort = RecvChannel(0, TAG_ABORT, CONTROL, "abort", slots=1)
        self.stash: list[torch.Tensor] = []  # START / SHUTDOWN that arrived while busy

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    def wait(self, pred, what: str, watch=()) -> None:
        deadline = self.deadline()
        while True:
            try:
                wait_until(lambda: pred() or self.ctrl.ready() or self.abort.ready(), deadline, what,
                           (*watch, self.ctrl.head, self.abort.head))
            except TPPTimeout:
                raise TPPTimeout(f"rank {self.rank} ({self.layout.role(self.rank)}): no {what} within "
                                 f"{self.timeout:g} s and no keepalive from rank 0") from None
            if self.abort.ready():
                raise TPPAborted(f"rank {self.rank}: aborted by rank 0 ({self.abort_reason()})")
            if self.ctrl.ready():
                msg = self._take_control()
                if int(msg[0]) == KEEPALIVE:
                    deadline = self.deadline()
                else:
                    self.stash.append(msg)
                continue
            return

    def _take_control(self) -> torch.Tensor:
        slot, v = self.ctrl.take()
        msg = v["msg"].clone()
        self.ctrl.release(slot, repost=int(msg[0]) != SHUTDOWN)
        return msg

    def abort_reason(self) -> str:
        failed = int(self.abort.views[0]["msg"][1])
        if failed > 0:
            return f"rank {failed} failed"
        return "the pipeline stalled: no frames within the timeout" if failed == -2 else "the front failed"

    def next_command(self) -> torch.Tensor:
        """The next START or SHUTDOWN (keepalives handled; idle waits are bounded the same way)."""
        while not self.stash:
            self.wait(lambda: bool(self.stash), "session or keepalive from rank 0")
        return self.stash.pop(0)


def _watch_aborts(waiter: WorkerWaiter, report, grace: float = 2.0) -> None:
    """Exit the process if the main thread has not ended `grace` s after an ABORT (it is stuck)."""
    head = waiter.abort.head
    with SIGNAL:
        SIGNAL.wait_for(lambda: head.done)
    if head.error is not None:
        return  # rank 0 is gone: the main thread's waits see that too
    time.sleep(grace)
    text = f"rank {waiter.rank}: aborted by rank 0 ({waiter.abort_reason()}) while its main thread was busy"
    print(f"liveavatar_rt.parallel: {text}", file=sys.stderr)
    report(False, text)
    exit_process(1)


def run_worker(rank: int, layout: Layout, pipe, timeout: float, report=lambda ok, text, stats=None: None) -> int:
    """Serve sessions until SHUTDOWN (exit code 0) or a failure (1, reason sent to rank 0).
    timeout: seconds any wait may last without news (rank 0's keepalives extend it)."""
    waiter = WorkerWaiter(rank, layout, timeout)
    out = SendChannel(0, TAG_REPORT, REPORT, "report", slots=1)
    threading.Thread(target=_watch_aborts, args=(waiter, report), daemon=True).start()
    stats: list[dict] = []
    try:
        while True:
            msg = waiter.next_command()
            if int(msg[0]) == SHUTDOWN:
                break
            stats.append(_run_session(rank, layout, pipe, waiter, SessionHeader.decode(msg)))
        _send_report(out, BYE, rank, -1, "", timeout)
        report(True, "", stats)
        return 0
    except TPPError as exc:
        text = str(exc) if str(exc).startswith(f"rank {rank}") else f"rank {rank} ({layout.role(rank)}): {exc}"
    except Exception as exc:  # any failure must end the ring, with its reason
        text = f"rank {rank} ({layout.role(rank)}) failed: {type(exc).__name__}: {exc}"
        traceback.print_exc()
    print(f"liveavatar_rt.parallel: {text}", file=sys.stderr)
    try:
        _send_report(out, ERROR, rank, -1, text, min(timeout, 5.0))
    except TPPError:
        pass  # rank 0 is gone too: nothing more to tell
    report(False, text, stats)
    return 1


def _send_report(out: SendChannel, kind: int, rank: int, block: int, text: str, timeout: float) -> None:
    v = out.acquire(time.monotonic() + timeout)
    encode_report(v, kind, rank, block, text)
    out.send()
    out.flush(time.monotonic() + timeout)


def _run_session(rank: int, layout: Layout, pipe, waiter: WorkerWaiter, hdr: SessionHeader) -> dict:
    t0 = time.perf_counter()
    dev = pipe.model.ops.device
    payload = RecvChannel(0, session_tag(TAG_SESSION, hdr.session), hdr.payload(dev), "session payload", slots=1)
    waiter.wait(payload.ready, "session payload from rank 0", [payload.head])
    slot, v = payload.take()
    payload.release(slot, repost=False)
    stage = Stage(rank, layout, pipe, hdr, v["text"], v["ref"], v["motion"], waiter)
    src = rank - 1
    inbox = RecvChannel(src, session_tag(TAG_DATA, hdr.session), stage.input_packet(), "block latent", SLOTS)
    ends, expect, first_block_at = 0, 0, None
    with torch.no_grad():
        while ends < SLOTS:
            t = time.perf_counter()
            waiter.wait(inbox.ready, f"block {expect} from rank {src}", [inbox.head, *stage._sends()])
            stage.stats["wait_in_s"] += time.perf_counter() - t
            slot, v = inbox.take()
            if int(v["meta"][1]) & FLAG_END:
                inbox.release(slot, repost=False)
                ends += 1
                continue
            n, flags = (int(f) for f in v["meta"].tolist())
            if n != expect:
                raise TPPError(f"rank {rank}: got block {n} from rank {src}, expected {expect}")
            audio = (v["loc"], v["glob"]) if "loc" in v else None
            stage.handle(n, v["x"], audio, flags)
            inbox.release(slot, repost=True)
            if first_block_at is None:
                first_block_at = time.perf_counter() - t0
            expect += 1
            if after_block is not None:
                after_block(rank, n)
    stage.finish()
    stats = dict(stage.stats, session=hdr.session, setup_s=stage.stats["prefill_s"], first_block_s=first_block_at)
    return stats
