"""One websocket client = one session: receive loop, send loop, clock, teardown.

Everything here runs on the event loop; the model runs in the session's StreamWorker thread and
audio is decoded and pushed in its AudioFeeder thread (audio_in.py), so no client's input can
hold the loop.
- receive: start -> (audio | ack | end | player)*, at most `max_messages_per_s` messages a
  second (limits.Throttle: past it reading pauses). The start message is parsed and its image
  decoded off the loop. When the audio received runs more than `max_audio_ahead_s` ahead of what
  was rendered, reading pauses, so TCP flow control slows the client down instead of buffers
  growing.
- send: a bounded queue of segments. A segment leaves only while fewer than `ack_window`
  segments are unacknowledged; when `queue_segments` are waiting the oldest is dropped
  (counted as dropped frames), so a client that stops reading costs bounded memory.
- clock (every 0.1 s): once audio has started, if none arrives for `silence_after_s`, silence
  is pushed in real time (up to the wall clock) so the avatar keeps moving, listening; and each
  phase's deadline is checked (limits.py: start, first audio, silence cap, ack).
- teardown (disconnect, error, done, deadline): never waits without a deadline (aio.py): stop
  the tasks (<= 1 s), send the error if any (<= 2 s), give a block in flight <= 1 s (an exclusive
  engine such as a TPP ring: up to 30 s), release the slot, then close the socket (<= 2 s; a
  client that reconnects on the close finds its slot free).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .aio import join_thread, settle, within
from .audio_in import AudioFeeder
from .config import ServeConfig
from .limits import Phase, Throttle, expired
from .memory import trim_soon
from .metrics import SessionStats
from .protocol import ProtocolError, StartRequest, parse_ack, parse_first_message, parse_player, parse_text
from .transport import TRANSPORT_ERRORS, transport_closed
from .worker import StreamWorker

log = logging.getLogger("liveavatar_rt.serve")

TICK_S = 0.1  # the clock: silence feeding and deadline checks
BACKPRESSURE_POLL_S = 0.05
TASK_GRACE_S = 1.0  # stopped tasks get this long; stragglers are left to end when the socket closes
SEND_GRACE_S = 2.0  # the error message and the close frame each get this long
WORKER_GRACE_S = 1.0  # a block in flight may finish after the slot is freed (sessions are independent)
WORKER_JOIN_S = 30.0  # an exclusive engine (TPP ring): the next session must not start before it ends


class Connection:
    def __init__(self, ws: WebSocket, server, session_id: str):
        self.ws, self.server, self.cfg = ws, server, server.cfg
        self.cfg: ServeConfig
        self.sid = session_id
        now = time.monotonic()
        self.stats = SessionStats(session_id, self.cfg.late_slack_s, fps=server.engine.fps)
        self.phase = Phase(opened_at=now)
        self.throttle = Throttle(self.cfg.max_messages_per_s, now)
        self.req: StartRequest | None = None
        self.worker: StreamWorker | None = None
        self.sess = None
        self.feeder: AudioFeeder | None = None
        self.queue: collections.deque = collections.deque()
        self.wake = asyncio.Event()
        self.acked = 0  # highest segment seq the client acknowledged
        self.sent_seq = 0
        self.pushed_s = 0.0  # audio pushed into the session (client + silence), seconds
        self.rendered_s = 0.0  # audio consumed by finished blocks, seconds
        self.finished = False  # done or error queued: nothing more will be produced
        self.closing = False  # teardown began: every loop stops at its next look
        self._send_lock = asyncio.Lock()
        self._pair_open = False  # a segment header went out without its payload (cancelled mid-pair)
        self._close_with = (1000, "")  # the close frame sent at teardown (an error sets its own)
        self._released = False

    # ---- entry ----------------------------------------------------------------------------
    async def run(self) -> None:
        tasks = {asyncio.create_task(self._receive_loop(), name=f"{self.sid}-recv"),
                 asyncio.create_task(self._send_loop(), name=f"{self.sid}-send"),
                 asyncio.create_task(self._clock(), name=f"{self.sid}-clock")}
        error = None
        try:
            # whichever ends first ends the session: the client (disconnect, bad input), the
            # stream (done, or a worker error already sent) or a missed deadline
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            error = self._outcome(done)
        finally:  # also when run() itself is cancelled (server shutdown)
            await self._teardown(tasks, error)

    def _outcome(self, done) -> ProtocolError | None:
        """The error to send for the tasks that ended (None: a normal end or a client gone)."""
        errors = []
        for t in done:
            if t.cancelled():
                continue
            exc = t.exception()
            if isinstance(exc, ProtocolError):
                errors.append(exc)
            elif isinstance(exc, WebSocketDisconnect):
                if TRANSPORT_ERRORS.get(exc.code) == exc.reason:  # refused by the websocket layer,
                    self.server.stats.error(exc.reason)  # which sent the JSON error itself
            elif exc is not None and not isinstance(exc, OSError):
                log.error("session %s: internal error", self.sid, exc_info=exc)
                errors.append(ProtocolError("internal", f"server error: {type(exc).__name__}"))
        return errors[0] if errors else None

    def release(self) -> None:
        """Give the server's session slot back (once; app.py calls it again on any exit)."""
        if not self._released:
            self._released = True
            self.server.release()

    async def _teardown(self, tasks, error: ProtocolError | None) -> None:
        self.closing = True
        if self.worker is not None:
            self.worker.stop()
        self.wake.set()
        await settle(tasks, TASK_GRACE_S)
        if error is not None:
            self.server.stats.error(error.code)  # counted even when it cannot be delivered
            self._close_with = (error.close_code, error.code)
            if not self._client_gone() and not self._pair_open:
                await within(self._send_quietly(error.to_json()), SEND_GRACE_S)
        if self.worker is not None:
            self.worker.stop()  # again: a receive task that outlived settle() may have started it
            exclusive = self.server.engine.capacity_limit is not None
            await join_thread(self.worker, WORKER_JOIN_S if exclusive else WORKER_GRACE_S)
        if self.feeder is not None:
            self.feeder.close()
        self.server.stats.finish(self.stats)
        # the slot is free before the client sees the close: a client that reconnects on
        # the close (after an error or the end) is never refused as busy by its own session
        self.release()
        await within(self._close(*self._close_with), SEND_GRACE_S)
        if self.worker is not None:  # the session's memory, once its thread has let go of it
            await join_thread(self.worker, WORKER_GRACE_S)
            trim_soon()

    # ---- receiving ------------------------------------------------------------------------
    async def _next_message(self) -> dict:
        wait = self.throttle.delay(time.monotonic())
        # always yield once: queued messages are returned without suspending, so a burst of
        # them would otherwise run back to back and keep every other connection waiting
        await asyncio.sleep(wait)
        msg = await self.ws.receive()  # a plain await: cancellable at any point, nothing lost
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000), msg.get("reason"))
        return msg

    async def _receive_loop(self) -> None:
        msg = await self._next_message()
        self.phase.started = True  # the start deadline is met; parsing it is our time, not the client's
        text = msg.get("text") if msg.get("bytes") is None else None
        self.req = await asyncio.to_thread(parse_first_message, text, self.cfg)
        if self.closing:
            return
        self.server.stats.active[self.sid] = self.stats
        loop = asyncio.get_running_loop()
        self.worker = StreamWorker(self.server.engine, self.req,
                                   lambda ev: loop.call_soon_threadsafe(self._on_event, ev), self.sid)
        self.worker.start()
        while not self.closing:
            while (self.pushed_s - self.rendered_s > self.cfg.max_audio_ahead_s and not self.finished
                   and not self.closing):
                # backpressure on the client's audio: stop reading (not reading, the disconnect
                # would wait in the queue: ask the transport whether the client is still there)
                if transport_closed(self.ws.scope):
                    raise WebSocketDisconnect(1006, "lost while reading was paused")
                await asyncio.sleep(BACKPRESSURE_POLL_S)
            msg = await self._next_message()
            if self.closing:
                return
            if msg.get("bytes") is not None:
                await self._on_audio(msg["bytes"])
            else:
                await self._on_text(msg.get("text") or "")

    async def _on_text(self, text: str) -> None:
        parsed = parse_text(text, self.cfg, limit=self.cfg.max_control_bytes)
        kind = parsed["type"]
        if kind == "ack":
            self.acked = max(self.acked, min(parse_ack(parsed), self.sent_seq))
            self.wake.set()
        elif kind == "player":
            self.stats.on_player(**parse_player(parsed))
        elif kind == "end":
            if self.feeder is None:
                raise ProtocolError("protocol", '"end" before the session was ready')
            if not self.phase.ended:
                self.phase.ended = True
                await self.feeder.end()
        else:
            raise ProtocolError("protocol", 'the session has already started: "start" can be sent only once')

    async def _on_audio(self, data: bytes) -> None:
        if self.feeder is None:
            raise ProtocolError("protocol", 'audio sent before "ready": wait for the ready message')
        if self.phase.ended:
            raise ProtocolError("protocol", 'audio sent after "end"')
        if not data:
            return
        now = time.monotonic()
        self.phase.last_audio_at, self.phase.silence_since = now, None
        if self.phase.first_audio_at is None:
            self.phase.first_audio_at = now
        if self.stats.first_audio_at is None:
            self.stats.first_audio_at = now  # TTFF runs from receipt, not from the end of the push
        seconds = await self.feeder.audio(data)
        self.pushed_s += seconds
        self.stats.on_audio(seconds)

    # ---- the clock: silence and deadlines ----------------------------------------------------
    async def _clock(self) -> None:
        while not self.closing:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            err = expired(self.phase, self.cfg, now)
            if err is not None:
                raise err
            await self._feed_silence(now)

    async def _feed_silence(self, now: float) -> None:
        p = self.phase
        if self.feeder is None or p.ended or p.last_audio_at is None:
            return
        if now - p.last_audio_at < self.cfg.silence_after_s:
            return
        deficit = (now - self.stats.first_audio_at) - self.pushed_s  # wall clock minus media clock
        if deficit > TICK_S / 2:
            if p.silence_since is None:
                p.silence_since = now
            rate = self.req.audio.sample_rate
            n = int(min(deficit, 1.0) * rate)
            await self.feeder.silence(n)
            self.pushed_s += n / rate
            self.stats.on_audio(n / rate, silence=True)

    # ---- events from the worker thread ------------------------------------------------------
    def _on_event(self, ev: tuple) -> None:
        if self.closing:
            return  # posted before the worker saw stop(): nobody will send it
        kind = ev[0]
        if kind == "ready":
            self.sess = ev[1]
            self.stats.ready_at = self.phase.ready_at = time.monotonic()
            self.feeder = AudioFeeder(self.sess, self.req.audio, self.sid)
            self.queue.append(("json", {"type": "ready", "session": self.sid, "width": self.sess.width,
                                        "height": self.sess.height, "fps": self.server.engine.fps,
                                        "audio_rate": self.server.engine.audio_rate, "note": self.server.engine.note,
                                        "setup_s": round(self.stats.ready_at - self.stats.opened_at, 3)}))
        elif kind == "init":
            self.queue.append(("init", {"type": "init", "mime": ev[1], "bytes": len(ev[2])}, ev[2]))
        elif kind == "segment":
            _, block, start, frames, data, compute = ev
            self.stats.frames_generated += frames
            self.stats.block_compute_s = compute
            if block >= 0:
                eng = self.server.engine
                self.rendered_s = (block + 1) * eng.block_frames / eng.fps
            waiting = [i for i, it in enumerate(self.queue) if it[0] == "segment"]
            if len(waiting) >= self.cfg.queue_segments:
                dropped = self.queue[waiting[0]]
                del self.queue[waiting[0]]
                self.stats.frames_dropped += dropped[1]["frames"]
            meta = {"type": "segment", "block": block, "start_frame": start, "frames": frames, "bytes": len(data)}
            self.queue.append(("segment", meta, data))
        elif kind == "done":
            self.finished = True
            self.queue.append(("done",))
        elif kind == "error":
            self.finished = True
            self.queue.append(("error", ProtocolError(ev[1], ev[2])))
        self.wake.set()

    # ---- sending ----------------------------------------------------------------------------
    def _window_full(self) -> bool:
        return self.queue[0][0] == "segment" and self.sent_seq - self.acked >= self.cfg.ack_window

    async def _send_loop(self) -> None:
        while not self.closing:
            while not self.queue or self._window_full():
                # segments held back only by missing acks start the ack deadline (limits.py)
                self.phase.ack_wait_since = (self.phase.ack_wait_since or time.monotonic()) if self.queue else None
                self.wake.clear()
                await self.wake.wait()
                if self.closing:
                    return
            self.phase.ack_wait_since = None
            item = self.queue.popleft()
            kind = item[0]
            if kind == "json":
                await self._send(item[1])
            elif kind == "init":
                await self._send(item[1], item[2])
            elif kind == "segment":
                self.sent_seq += 1
                meta = dict(item[1], seq=self.sent_seq, stats=self.stats.summary())
                await self._send(meta, item[2])
                self.stats.on_sent(meta["start_frame"], meta["frames"], len(item[2]))
            elif kind == "done":
                await self._send({"type": "done", "session": self.sid, "stats": self.stats.summary()})
                return  # run() closes the socket after the teardown
            elif kind == "error":
                e = item[1]
                self.server.stats.error(e.code)
                self._close_with = (e.close_code, e.code)
                await self._send_quietly(e.to_json())
                return

    async def _send(self, meta: dict, data: bytes | None = None) -> None:
        async with self._send_lock:  # a JSON header and its binary payload stay adjacent
            self._pair_open = data is not None
            await self.ws.send_text(json.dumps(meta))
            if data is not None:
                await self.ws.send_bytes(data)
            self._pair_open = False

    async def _send_quietly(self, meta: dict) -> None:
        try:
            await self._send(meta)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client is gone already

    def _client_gone(self) -> bool:
        return WebSocketState.DISCONNECTED in (self.ws.application_state, self.ws.client_state)

    async def _close(self, code: int, reason: str = "") -> None:
        if not self._client_gone():
            try:
                await self.ws.close(code, reason)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the client left meanwhile
