"""Rank 0: the front of the ring. `FrontRing` owns rank 0's side of torch.distributed in one
driver thread; a Session on a ring pipeline computes its blocks through a `RingExecutor`.

    pipe = Pipeline.from_pretrained("tiny", layout="4+1")   # starts the ring (launch.py)
    with pipe.session(image, seed=0) as sess: ...            # engine.Session, as in one process

The Session decides everything about a block (its noise, audio features, sink flags) and
submits it as a `BlockJob`; the driver thread runs rank 0's part: the audio encoder (the tokens
travel with the latent), rank 0's steps, and the send to rank 1; it takes the clean latent and
frames back from the VAE rank and hands them to the executor as `BlockResult`s. It is also
the pipeline's watchdog: with blocks in flight and no frames for `timeout` seconds, or any
worker report / lost connection, it aborts every rank and the session raises.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import torch

from ..engine.executor import BlockJob, BlockResult, SessionSpec
from .comm import SIGNAL, RecvChannel, SendChannel, TPPError, TPPTimeout, notify, wait_until
from .layout import Layout
from .protocol import (ABORT, CONTROL, ERROR, FLAG_END, KEEPALIVE, REPORT, SHUTDOWN, TAG_ABORT, TAG_CONTROL,
                       TAG_FRAMES, TAG_REPORT, TAG_SESSION, SessionHeader, decode_report, job_flags, session_tag)
from .stage import SLOTS, Stage


class FrontWaiter:
    """Rank 0's waits: bounded by `timeout`, and any worker report or lost worker ends them."""

    def __init__(self, ring: "FrontRing"):
        self.ring = ring
        # While rank 0 waits (for a send buffer, say), it keeps taking decoded frames: the ring
        # is a cycle (frames come back to rank 0), so a rank 0 that stopped taking them could
        # block the VAE rank and, through it, the rank rank 0 is waiting for.
        self.side_ready = lambda: False
        self.side_work = lambda: None

    def deadline(self) -> float:
        return time.monotonic() + self.ring.timeout

    def wait(self, pred, what: str, watch=()) -> None:
        ring = self.ring
        deadline = self.deadline()
        while True:
            try:
                wait_until(lambda: pred() or ring._report_ready() or self.side_ready(),
                           deadline, what, (*watch, *ring._report_heads()))
            except TPPTimeout:
                raise TPPTimeout(f"rank 0: no {what} within {ring.timeout:g} s") from None
            ring._check_reports()
            if pred():
                return
            if self.side_ready():
                self.side_work()


class RingExecutor:
    """A session's block executor on the ring (see engine/executor.py): jobs queue here for
    the driver thread, results come back in order. Up to the ring's `max_ahead` blocks deep."""

    def __init__(self, ring: "FrontRing", spec: SessionSpec, wake):
        self.ring, self.spec, self.wake = ring, spec, wake
        self.depth = ring.max_ahead
        pipe = ring.pipe
        h, w = spec.latent_hw
        pos = spec.positions
        self.header = SessionHeader(
            session=ring._next_session_id(), seed=spec.seed, height=spec.height, width=spec.width, lat_h=h, lat_w=w,
            text_len=spec.text.shape[0], text_dim=spec.text.shape[1], dtype=pipe.dtype,
            latent_dtype=pipe.latent_dtype,
            motion_frames=spec.motion.shape[2], decode_video=spec.decode, sink_offset=spec.sink_offset,
            position_mode=pos.mode, position_limit=pos.limit, position_period=pos.period)
        self.stats: dict = {}  # rank 0's timings of the session, once it has ended
        self.started_at = time.perf_counter()
        self._jobs: deque[BlockJob] = deque()  # submitted, not yet launched (driver thread takes them)
        self._results: deque[BlockResult] = deque()
        self._error: BaseException | None = None
        self._ended = False  # no more jobs: the driver ends the session on every rank
        self._cancel = False  # drop what is not launched, discard what comes back
        self._finished = threading.Event()  # the driver is done with this session
        ring._start(self)

    # ---- the Session's side -----------------------------------------------------------
    def submit(self, job: BlockJob) -> None:
        self._raise_if_failed()
        with SIGNAL:
            self._jobs.append(job)
            SIGNAL.notify_all()

    def ready(self) -> bool:
        return bool(self._results) or self._error is not None

    def take(self) -> BlockResult:
        if self._results:
            with SIGNAL:
                return self._results.popleft()
        self._raise_if_failed()
        raise RuntimeError("no result to take")

    def end(self) -> None:
        self._ended = True
        notify()

    def close(self) -> None:
        """Cancel what is left (the ring ends the session on every rank) and wait until it has."""
        self._cancel = self._ended = True
        notify()
        if self.ring.error is not None or self.ring._stopped.is_set():
            return
        if not self._finished.wait(self.ring.timeout + 5):
            raise TPPError("the ring did not end the session in time")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self.ring._stopped.is_set():
            raise TPPError(f"the TPP ring stopped: {self.ring.error}")

    # ---- the driver's side ------------------------------------------------------------
    def _deliver(self, result: BlockResult | None = None, error: BaseException | None = None) -> None:
        with SIGNAL:
            if error is not None:
                self._error = error
            elif not self._cancel:
                self._results.append(result)
        self.wake()


class FrontRing:
    """Rank 0 of a running ring (torch.distributed already initialised with rank 0)."""

    def __init__(self, pipe, layout: Layout | str, timeout: float = 30.0, max_ahead: int | None = None):
        self.pipe, self.layout, self.timeout = pipe, Layout.parse(layout), timeout
        self.max_ahead = max_ahead or self.layout.world + 1  # blocks in flight
        self.workers = list(range(1, self.layout.world))
        self.error: BaseException | None = None
        self._sid = 0
        self._pending: RingExecutor | None = None
        self._active: RingExecutor | None = None
        self._closing = False
        self._ctrl = {w: SendChannel(w, TAG_CONTROL, CONTROL, "control", slots=2) for w in self.workers}
        self._reports = {w: RecvChannel(w, TAG_REPORT, REPORT, "report", slots=1) for w in self.workers}
        self._byes: set[int] = set()
        self._abort_sends: list[SendChannel] = []
        self._last_keepalive = 0.0
        self._waiter = FrontWaiter(self)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True, name="tpp-front")
        self._thread.start()

    # ---- public ---------------------------------------------------------------------------
    def open(self, spec: SessionSpec, wake) -> RingExecutor:
        """The executor of a new session (the ring runs one session at a time)."""
        self._check()
        busy = self._active is not None and not self._active._finished.is_set()
        if busy or self._pending is not None:
            raise TPPError("the ring runs one session at a time: close the previous one first")
        return RingExecutor(self, spec, wake)

    def close(self) -> None:
        """Shut every worker down (SHUTDOWN, wait for their BYE); idempotent."""
        if self._active is not None:
            try:
                self._active.close()
            except TPPError:
                pass
        self._closing = True
        notify()
        self._stopped.wait(self.timeout + 10)

    def _check(self) -> None:
        if self.error is not None:
            raise TPPError(f"the TPP ring has failed: {self.error}") from self.error
        if self._closing or self._stopped.is_set():
            raise TPPError("the TPP ring is closed")

    def _next_session_id(self) -> int:
        self._sid += 1
        return self._sid

    def _start(self, ex: RingExecutor) -> None:
        self._check()
        with SIGNAL:
            self._pending = ex
            SIGNAL.notify_all()

    # ---- reports from workers -------------------------------------------------------------
    def _report_heads(self):
        return [ch.head for ch in self._reports.values() if ch.head is not None]

    def _report_ready(self) -> bool:
        return any(ch.ready() for ch in self._reports.values())

    def _check_reports(self) -> None:
        for w, ch in self._reports.items():
            if ch.ready():
                slot, v = ch.take()
                kind, rank, _, text = decode_report(v)
                ch.release(slot, repost=False)
                if kind == ERROR:
                    raise TPPError(text or f"rank {w} failed", w)
                self._byes.add(w)
                if not self._closing:
                    raise TPPError(f"rank {w} left the ring unexpectedly", w)

    # ---- control --------------------------------------------------------------------------
    def _control(self, w: int, msg: torch.Tensor) -> None:
        v = self._ctrl[w].acquire(self._waiter.deadline(), self._report_heads())
        v["msg"].copy_(msg)
        self._ctrl[w].send()

    def _keepalive(self) -> None:
        now = time.monotonic()
        if now - self._last_keepalive < self.timeout / 3:
            return
        self._last_keepalive = now
        msg = torch.zeros(16, dtype=torch.int64)
        msg[0] = KEEPALIVE
        for w in self.workers:
            if self._ctrl[w].free():  # a worker still busy with the last one needs no other
                self._ctrl[w].acquire(now + 1)["msg"].copy_(msg)
                self._ctrl[w].send()

    def _abort(self, failed_rank: int) -> None:
        """One ABORT per worker on its abort channel (not waited for: some may be gone)."""
        msg = torch.zeros(16, dtype=torch.int64)
        msg[0], msg[1] = ABORT, failed_rank
        for w in self.workers:
            try:
                ch = SendChannel(w, TAG_ABORT, CONTROL, "abort", slots=1)
                ch.acquire(time.monotonic() + 1)["msg"].copy_(msg)
                ch.send()
                self._abort_sends.append(ch)  # a dropped Work would cancel its send
            except TPPError:
                pass  # that worker is gone already

    # ---- the driver thread ----------------------------------------------------------------
    def _drive(self) -> None:
        try:
            torch.set_grad_enabled(False)
            while True:
                self._keepalive()
                with SIGNAL:
                    if not (self._pending or self._closing or self._report_ready()):
                        SIGNAL.wait(min(0.25, self.timeout / 6))
                for p in self._report_heads():
                    if p.done:
                        p.check()
                self._check_reports()
                if self._pending is not None:
                    ex, self._pending = self._pending, None
                    self._active = ex
                    try:
                        self._run(ex)
                    except BaseException as exc:
                        self._fail(exc)
                        return
                    finally:
                        self._active = None
                        ex._finished.set()
                elif self._closing:
                    self._shutdown()
                    return
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._stopped.set()
            notify()

    def _fail(self, exc: BaseException) -> None:
        """Record the failure, abort every worker, and end the sessions with the reason."""
        self.error = exc
        self._abort(-2 if isinstance(exc, TPPTimeout) else getattr(exc, "rank", -1))
        err = exc if isinstance(exc, TPPError) else TPPError(f"rank 0 failed: {type(exc).__name__}: {exc}")
        for ex in (self._active, self._pending):
            if ex is not None:
                ex._deliver(error=err)
                ex._finished.set()
        notify()

    def _shutdown(self) -> None:
        msg = torch.zeros(16, dtype=torch.int64)
        msg[0] = SHUTDOWN
        for w in self.workers:
            self._control(w, msg)
        while len(self._byes) < len(self.workers):
            self._waiter.wait(lambda: len(self._byes) == len(self.workers), "BYE from every worker")

    def _run(self, ex: RingExecutor) -> None:
        hdr, layout, pipe, spec = ex.header, self.layout, self.pipe, ex.spec
        t0 = time.perf_counter()
        dev = pipe.model.ops.device
        payload = hdr.payload(dev)
        for w in self.workers:
            self._control(w, hdr.encode())
            ch = SendChannel(w, session_tag(TAG_SESSION, hdr.session), payload, "session payload", slots=1)
            v = ch.acquire(self._waiter.deadline())
            v["text"].copy_(spec.text)
            v["ref"].copy_(spec.ref_latent)
            v["motion"].copy_(spec.motion)
            ch.send()
        stage = Stage(0, layout, pipe, hdr, spec.text, spec.ref_latent, spec.motion, self._waiter)
        frames_in = RecvChannel(layout.vae_rank, session_tag(TAG_FRAMES, hdr.session), hdr.frames(pipe.stream, dev),
                                "frames", SLOTS)
        st = {"received": 0, "ends": 0, "last_news": time.monotonic(), "first_frame_at": None}
        launch_time: dict[int, float] = {}

        def take_frames() -> None:
            while frames_in.ready():
                slot, v = frames_in.take()
                if int(v["meta"][1]) & FLAG_END:
                    frames_in.release(slot, repost=False)
                    st["ends"] += 1
                    continue
                n = int(v["meta"][0])
                if n != st["received"]:
                    raise TPPError(f"rank 0: frames of block {n} arrived, expected block {st['received']}")
                result = BlockResult(n, v["x"].cpu().clone(), v["video"].cpu().clone() if "video" in v else None,
                                     {"pipeline_latency": time.perf_counter() - launch_time.pop(n)})
                frames_in.release(slot, repost=True)
                st["received"] += 1
                st["last_news"] = time.monotonic()
                if st["first_frame_at"] is None:
                    st["first_frame_at"] = time.perf_counter() - ex.started_at
                ex._deliver(result)

        self._waiter.side_ready, self._waiter.side_work = frames_in.ready, take_frames
        try:
            self._pump(ex, stage, frames_in, st, launch_time, take_frames)
        finally:
            self._waiter.side_ready, self._waiter.side_work = (lambda: False), (lambda: None)
        ex.stats = dict(stage.stats, ttff_s=st["first_frame_at"], total_s=time.perf_counter() - t0)

    def _pump(self, ex: RingExecutor, stage: Stage, frames_in: RecvChannel, st: dict, launch_time: dict,
              take_frames) -> None:
        """Launch submitted blocks, take frames as they come back, until END has gone round."""
        pipe = self.pipe
        dev = pipe.model.ops.device
        launched = 0
        end_sent = False
        while st["ends"] < SLOTS:
            self._keepalive()
            self._check_reports()
            before = st["received"]
            take_frames()
            progressed = st["received"] != before
            if not end_sent and (ex._cancel or (ex._ended and not ex._jobs)):
                stage.finish()  # END down the ring (and the sink, drains)
                end_sent = True
                progressed = True
            elif not end_sent and ex._jobs:
                with SIGNAL:
                    job = ex._jobs.popleft()
                if job.index != launched:
                    raise TPPError(f"rank 0: block {job.index} submitted, expected block {launched}")
                launch_time[job.index] = time.perf_counter()
                t = time.perf_counter()
                audio = stage.stepper.audio(job.features)
                stage.stats["compute_s"] += time.perf_counter() - t
                stage.handle(job.index, job.noise.to(device=dev, dtype=pipe.dtype), audio, job_flags(job))
                launched += 1
                progressed = True
                st["last_news"] = time.monotonic()
            if progressed:
                continue
            if launched > st["received"] and time.monotonic() - st["last_news"] > self.timeout:
                raise TPPTimeout(f"rank 0: no frames from rank {self.layout.vae_rank} within {self.timeout:g} s "
                                 f"(blocks {st['received']}..{launched - 1} in flight): a rank stalled")
            with SIGNAL:
                if not (frames_in.ready() or self._report_ready()
                        or (not end_sent and (ex._cancel or ex._ended or ex._jobs))):
                    SIGNAL.wait(min(0.25, self.timeout / 6))
            if frames_in.head is not None and frames_in.head.done:
                frames_in.head.check()
            for p in stage._sends():
                if p.done:
                    p.check()
