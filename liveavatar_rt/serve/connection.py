"""One websocket client = one session: receive loop, send loop, silence feeder, teardown.

Everything here runs on the event loop; the model runs in the session's StreamWorker thread.
- receive: start -> (audio | ack | end)*; audio is pushed into the session at once (cheap).
  When the audio received runs more than `max_audio_ahead_s` ahead of what was rendered,
  reading pauses, so TCP flow control slows the client down instead of buffers growing.
- send: a bounded queue of segments. A segment leaves only while fewer than `ack_window`
  segments are unacknowledged; when `queue_segments` are waiting the oldest is dropped
  (counted as dropped frames), so a client that stops reading costs bounded memory.
- silence: once audio has started, if none arrives for `silence_after_s`, silence is pushed
  in real time (up to the wall clock) so the avatar keeps moving, listening.
- teardown (disconnect, error, end): stop the worker, wait for it, release the slot, then close
  the socket (so a client that reconnects on the close finds its slot free).
"""
from __future__ import annotations

import asyncio
import collections
import json
import time

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .config import ServeConfig
from .metrics import SessionStats
from .protocol import ProtocolError, StartRequest, decode_pcm, parse_ack, parse_player, parse_start, parse_text
from .worker import StreamWorker

SILENCE_TICK_S = 0.1
WORKER_JOIN_S = 30.0  # a block in flight finishes first; the 14B model may need long


class Connection:
    def __init__(self, ws: WebSocket, server, session_id: str):
        self.ws, self.server, self.cfg = ws, server, server.cfg
        self.cfg: ServeConfig
        self.sid = session_id
        self.stats = SessionStats(session_id, self.cfg.late_slack_s, fps=server.engine.fps)
        self.req: StartRequest | None = None
        self.worker: StreamWorker | None = None
        self.sess = None
        self.queue: collections.deque = collections.deque()
        self.wake = asyncio.Event()
        self.acked = 0  # highest segment seq the client acknowledged
        self.sent_seq = 0
        self.pushed_s = 0.0  # audio pushed into the session (client + silence), seconds
        self.rendered_s = 0.0  # audio consumed by finished blocks, seconds
        self.last_audio_at: float | None = None
        self.ended = False
        self.finished = False  # done or error queued: nothing more will be produced
        self._send_lock = asyncio.Lock()
        self._close_with = (1000, "")  # the close frame sent at teardown (an error sets its own)
        self._released = False

    # ---- entry ----------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []
        try:
            self.req = await self._receive_start()
            self.server.stats.active[self.sid] = self.stats
            self.worker = StreamWorker(self.server.engine, self.req,
                                       lambda ev: loop.call_soon_threadsafe(self._on_event, ev), self.sid)
            self.worker.start()
            recv, send = asyncio.create_task(self._receive_loop()), asyncio.create_task(self._send_loop())
            tasks = [recv, send, asyncio.create_task(self._silence_loop())]
            # whichever ends first ends the session: the client (disconnect, bad input) or the
            # stream (done, or a worker error already sent)
            done, _ = await asyncio.wait({recv, send}, return_when=asyncio.FIRST_COMPLETED)
            await self._cancel(tasks)
            for t in done:
                t.result()  # re-raise a ProtocolError or a disconnect
        except ProtocolError as e:
            await self._cancel(tasks)
            await self._send_error(e)
        except (WebSocketDisconnect, OSError):
            pass  # the client went away: nothing to tell it
        finally:
            await self._cancel(tasks)
            if self.worker is not None:
                self.worker.stop()
                await asyncio.to_thread(self.worker.join, WORKER_JOIN_S)
            self.server.stats.finish(self.stats)
            # the slot is free before the client sees the close: a client that reconnects on
            # the close (after an error or the end) is never refused as busy by its own session
            self.release()
            await self._close(*self._close_with)

    def release(self) -> None:
        """Give the server's session slot back (once; app.py calls it again on any exit)."""
        if not self._released:
            self._released = True
            self.server.release()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task]) -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- receiving ------------------------------------------------------------------------
    async def _receive(self, timeout: float, what: str) -> dict:
        try:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
        except asyncio.TimeoutError:
            code = "start_timeout" if what == "start" else "idle_timeout"
            raise ProtocolError(code, f"no {what} message within {timeout:g} s") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        return msg

    def _check_size(self, msg: dict) -> None:
        n = len(msg["bytes"]) if msg.get("bytes") is not None else len(msg.get("text") or "")
        if n > self.cfg.max_message_bytes:
            raise ProtocolError("message_too_large", f"message of {n} bytes exceeds the limit of "
                                                     f"{self.cfg.max_message_bytes} bytes")

    async def _receive_start(self) -> StartRequest:
        msg = await self._receive(self.cfg.start_timeout_s, "start")
        self._check_size(msg)
        if msg.get("text") is None:
            raise ProtocolError("protocol", 'the first message must be a JSON "start" message, got binary data')
        parsed = parse_text(msg["text"], self.cfg)
        if parsed["type"] != "start":
            raise ProtocolError("protocol", f'the first message must be "start", got {parsed["type"]!r}')
        # image decoding is bounded by the limits but can still take ~100 ms: off the loop
        return await asyncio.to_thread(parse_start, parsed, self.cfg)

    async def _receive_loop(self) -> None:
        while True:
            while self.pushed_s - self.rendered_s > self.cfg.max_audio_ahead_s and not self.finished:
                await asyncio.sleep(0.05)  # backpressure on the client's audio: stop reading
            msg = await self._receive(self.cfg.idle_timeout_s, "client")
            self._check_size(msg)
            if msg.get("bytes") is not None:
                self._on_audio(msg["bytes"])
                continue
            parsed = parse_text(msg.get("text") or "", self.cfg)
            kind = parsed["type"]
            if kind == "ack":
                self.acked = max(self.acked, min(parse_ack(parsed), self.sent_seq))
                self.wake.set()
            elif kind == "player":
                self.stats.on_player(**parse_player(parsed))
            elif kind == "end":
                if self.sess is None:
                    raise ProtocolError("protocol", '"end" before the session was ready')
                if not self.ended:
                    self.ended = True
                    self._guard(self.sess.end_audio)
            else:
                raise ProtocolError("protocol", 'the session has already started: "start" can be sent only once')

    def _on_audio(self, data: bytes) -> None:
        if self.sess is None:
            raise ProtocolError("protocol", 'audio sent before "ready": wait for the ready message')
        if self.ended:
            raise ProtocolError("protocol", 'audio sent after "end"')
        fmt = self.req.audio
        pcm = decode_pcm(data, fmt)
        if pcm.size:
            seconds = pcm.size / fmt.sample_rate
            self._guard(self.sess.push_audio, pcm, fmt.sample_rate)
            self.pushed_s += seconds
            self.stats.on_audio(seconds)
            self.last_audio_at = time.monotonic()

    @staticmethod
    def _guard(fn, *args) -> None:
        """Push/end on a session that already failed: the worker reports the failure itself."""
        try:
            fn(*args)
        except RuntimeError:  # SessionClosed, or a ring that stopped
            pass

    async def _silence_loop(self) -> None:
        while True:
            await asyncio.sleep(SILENCE_TICK_S)
            if self.sess is None or self.ended or self.last_audio_at is None:
                continue
            now = time.monotonic()
            if now - self.last_audio_at < self.cfg.silence_after_s:
                continue
            deficit = (now - self.stats.first_audio_at) - self.pushed_s  # wall clock minus media clock
            if deficit > SILENCE_TICK_S / 2:
                rate = self.req.audio.sample_rate
                n = int(min(deficit, 1.0) * rate)
                self._guard(self.sess.push_audio, np.zeros(n, np.float32), rate)
                self.pushed_s += n / rate
                self.stats.on_audio(n / rate, silence=True)

    # ---- events from the worker thread ------------------------------------------------------
    def _on_event(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "ready":
            self.sess = ev[1]
            self.stats.ready_at = time.monotonic()
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
    async def _send_loop(self) -> None:
        while True:
            while not self.queue or (self.queue[0][0] == "segment"
                                     and self.sent_seq - self.acked >= self.cfg.ack_window):
                self.wake.clear()
                await self.wake.wait()
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
                await self._send_error(item[1])
                return

    async def _send(self, meta: dict, data: bytes | None = None) -> None:
        async with self._send_lock:  # a JSON header and its binary payload stay adjacent
            await self.ws.send_text(json.dumps(meta))
            if data is not None:
                await self.ws.send_bytes(data)

    async def _send_error(self, e: ProtocolError) -> None:
        self.server.stats.error(e.code)
        try:
            await self._send(e.to_json())
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client is gone already
        self._close_with = (e.close_code, e.code)  # sent by run() after the teardown

    async def _close(self, code: int, reason: str = "") -> None:
        if WebSocketState.DISCONNECTED not in (self.ws.application_state, self.ws.client_state):
            try:
                await self.ws.close(code, reason)
            except (RuntimeError, OSError):
                pass
