"""Rank 0: the front of the ring. `FrontRing` owns rank 0's side of torch.distributed in one
driver thread; its sessions are `TPPSession`s (session.py) with Session's shape.

    ring = FrontRing(pipe, Layout.parse("4+1"))      # after comm.init(rank 0); see launch.py
    with ring.session(image, seed=0) as sess:
        sess.push_audio(pcm, 16000); sess.end_audio()
        for block in sess.frames(): ...               # engine.session.Block, same frames as Session

The driver thread does rank 0's work: per block it takes the block's audio features, runs the
audio encoder once (the tokens travel with the latent), draws the clip noise exactly as
Session does, runs rank 0's steps and sends the block on; it takes decoded frames back from the
VAE rank. It is also the pipeline's watchdog: with blocks in flight and no frames for `timeout`
seconds, or any worker report / lost connection, it aborts every rank and the session raises.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import torch

from ..engine.session import Block, clip_noise, drop_stream_start
from .comm import SIGNAL, RecvChannel, SendChannel, TPPError, TPPTimeout, notify, wait_until
from .layout import Layout
from .protocol import (ABORT, CONTROL, ERROR, FLAG_END, KEEPALIVE, REPORT, SHUTDOWN, TAG_ABORT, TAG_CONTROL,
                       TAG_FRAMES, TAG_REPORT, TAG_SESSION, decode_report, session_tag)
from .session import _DONE, TPPSession
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


class FrontRing:
    """Rank 0 of a running ring (torch.distributed already initialised with rank 0)."""

    def __init__(self, pipe, layout: Layout | str, timeout: float = 30.0, max_ahead: int | None = None):
        self.pipe, self.layout, self.timeout = pipe, Layout.parse(layout), timeout
        self.max_ahead = max_ahead or self.layout.world + 1  # blocks in flight
        self.workers = list(range(1, self.layout.world))
        self.error: BaseException | None = None
        self._sid = 0
        self._pending_session: TPPSession | None = None
        self._active: TPPSession | None = None
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
    def session(self, image, prompt_embeds: torch.Tensor | None = None, seed: int = 0, sink_replacement: bool = True,
                positions=None, sink_offset: int | None = None, keep_latents: bool = False) -> TPPSession:
        self._check()
        busy = self._active is not None and not self._active._finished.is_set()
        if busy or self._pending_session is not None:
            raise TPPError("the ring runs one session at a time: close the previous one first")
        text = self.pipe.default_text if prompt_embeds is None else prompt_embeds
        return TPPSession(self, image, text, seed, sink_replacement, positions, sink_offset, keep_latents)

    def generate(self, image, audio, sample_rate: int, seed: int = 0, **session_kw):
        """Offline on the ring: the same Video as Pipeline.generate."""
        from ..engine.pipeline import AUDIO_RATE, Video

        with self.session(image, seed=seed, **session_kw) as sess:
            sess.push_audio(audio, sample_rate)
            sess.end_audio()
            blocks = list(sess.frames())
        return Video(np.concatenate([b.video for b in blocks]), np.concatenate([b.audio for b in blocks]),
                     self.pipe.stream.fps, AUDIO_RATE)

    def close(self) -> None:
        """Shut every worker down (SHUTDOWN, wait for their BYE); idempotent."""
        if self._active is not None and not self._active._closed:
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

    def _start(self, sess: TPPSession) -> None:
        self._check()
        with SIGNAL:
            self._pending_session = sess
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
                    raise TPPError(text or f"rank {w} failed")
                self._byes.add(w)
                if not self._closing:
                    raise TPPError(f"rank {w} left the ring unexpectedly")

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
                    if not (self._pending_session or self._closing or self._report_ready()):
                        SIGNAL.wait(min(0.25, self.timeout / 6))
                for p in self._report_heads():
                    if p.done:
                        p.check()
                self._check_reports()
                if self._pending_session is not None:
                    sess, self._pending_session = self._pending_session, None
                    self._active = sess
                    try:
                        self._run(sess)
                    except BaseException as exc:
                        self._fail(exc)
                        return
                    finally:
                        self._active = None
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
        self._abort(-2 if isinstance(exc, TPPTimeout) else _failed_rank(exc))
        err = exc if isinstance(exc, TPPError) else TPPError(f"rank 0 failed: {type(exc).__name__}: {exc}")
        for sess in (self._active, self._pending_session):
            if sess is not None:
                with SIGNAL:
                    sess._blocks.append(err)
                sess._finished.set()
        notify()

    def _shutdown(self) -> None:
        msg = torch.zeros(16, dtype=torch.int64)
        msg[0] = SHUTDOWN
        for w in self.workers:
            self._control(w, msg)
        while len(self._byes) < len(self.workers):
            self._waiter.wait(lambda: len(self._byes) == len(self.workers), "BYE from every worker")

    def _run(self, sess: TPPSession) -> None:
        hdr, layout, pipe = sess.header, self.layout, self.pipe
        s = pipe.stream
        t0 = time.perf_counter()
        dev = pipe.model.ops.device
        payload = hdr.payload(dev)
        outs = []
        for w in self.workers:
            self._control(w, hdr.encode())
            ch = SendChannel(w, session_tag(TAG_SESSION, hdr.session), payload, "session payload", slots=1)
            v = ch.acquire(self._waiter.deadline())
            v["text"].copy_(sess.text)
            v["ref"].copy_(sess.ref_latent)
            v["motion"].copy_(sess.motion)
            ch.send()
            outs.append(ch)
        stage = Stage(0, layout, pipe, hdr, sess.text, sess.ref_latent, sess.motion, self._waiter)
        frames_in = RecvChannel(layout.vae_rank, session_tag(TAG_FRAMES, hdr.session), hdr.frames(s, dev),
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
                block = self._block(sess, n, v, launch_time.pop(n))
                frames_in.release(slot, repost=True)
                st["received"] += 1
                st["last_news"] = time.monotonic()
                if st["first_frame_at"] is None:
                    st["first_frame_at"] = time.perf_counter() - sess.started_at
                if not sess._cancel:
                    with SIGNAL:
                        sess._blocks.append(block)
                        SIGNAL.notify_all()

        self._waiter.side_ready, self._waiter.side_work = frames_in.ready, take_frames
        try:
            self._pump(sess, stage, frames_in, st, launch_time, take_frames)
        finally:
            self._waiter.side_ready, self._waiter.side_work = (lambda: False), (lambda: None)
        sess.stats = dict(stage.stats, ttff_s=st["first_frame_at"], total_s=time.perf_counter() - t0,
                          encode_s=sess.encode_seconds)
        with SIGNAL:
            sess._blocks.append(_DONE)
            SIGNAL.notify_all()
        sess._finished.set()

    def _pump(self, sess: TPPSession, stage: Stage, frames_in: RecvChannel, st: dict, launch_time: dict,
              take_frames) -> None:
        """Launch blocks as their audio arrives, take frames as they come back, until END."""
        hdr, pipe, layout = sess.header, self.pipe, self.layout
        s, dev = pipe.stream, pipe.model.ops.device
        launched = 0
        end_sent = False
        noise: tuple[int, torch.Tensor] | None = None
        while st["ends"] < SLOTS:
            self._keepalive()
            self._check_reports()
            before = st["received"]
            take_frames()
            progressed = st["received"] != before
            received = st["received"]
            with sess._lock:
                ready = sess.audio.blocks_ready()
                total = sess.audio.total_blocks if sess.audio.ended else None
            if not end_sent and (sess._cancel or (total is not None and launched >= total)):
                stage.finish()  # END down the ring (and the sink, drains)
                end_sent = True
                progressed = True
            elif (not end_sent and launched < ready and launched - received < self.max_ahead
                  and len(sess._blocks) < 2 * self.max_ahead):
                n = launched
                with sess._lock:
                    feats = sess.audio.block_features(n)[None]
                clip, k = divmod(n, s.blocks_per_clip)
                if noise is None or noise[0] != clip:
                    noise = (clip, clip_noise(hdr.seed, clip, s.frames_per_block * s.blocks_per_clip,
                                              hdr.lat_h, hdr.lat_w, pipe.dtype))
                F = s.frames_per_block
                x = noise[1][None, :, k * F:(k + 1) * F].to(device=dev, dtype=pipe.dtype)
                launch_time[n] = time.perf_counter()
                t = time.perf_counter()
                audio = stage.stepper.audio(feats)
                stage.stats["compute_s"] += time.perf_counter() - t
                stage.handle(n, x, audio)
                launched += 1
                progressed = True
                st["last_news"] = time.monotonic()
            if progressed:
                continue
            if launched > st["received"] and time.monotonic() - st["last_news"] > self.timeout:
                raise TPPTimeout(f"rank 0: no frames from rank {layout.vae_rank} within {self.timeout:g} s "
                                 f"(blocks {st['received']}..{launched - 1} in flight): a rank stalled")
            with SIGNAL:
                if not (frames_in.ready() or self._report_ready() or sess._cancel):
                    SIGNAL.wait(min(0.25, self.timeout / 6))
            if frames_in.head is not None and frames_in.head.done:
                frames_in.head.check()
            for p in stage._sends():
                if p.done:
                    p.check()

    def _block(self, sess: TPPSession, n: int, v: dict, launched_at: float) -> Block:
        s = self.pipe.stream
        frames = v["video"].cpu().numpy().copy()
        if sess.keep_latents:
            sess.latents.append(v["x"].cpu().clone())
        with sess._lock:
            pcm = sess.audio.block_pcm(n)
            sess.audio.release(n)
        if n == 0:
            frames, pcm = drop_stream_start(frames, pcm, s.frames_per_block)
        return Block(n, np.ascontiguousarray(frames), pcm, {"pipeline_latency": time.perf_counter() - launched_at})


def _failed_rank(exc: BaseException) -> int:
    import re

    m = re.search(r"\brank (\d+)", str(exc))
    return int(m.group(1)) if m else -1
