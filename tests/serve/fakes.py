"""In-process stand-ins for the socket, the server state and the model, so a Connection can be
driven on one event loop with a scripted client: deterministic orderings (a message arriving
in the same loop step as a cancellation) that real sockets only hit by chance.

    ws = FakeWebSocket(on_send=script)        # script(ws, msg) reacts to what the server sends
    server = FakeServer()
    conn = Connection(ws, server, "s1")        # with connection.StreamWorker = FakeWorker
"""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

from starlette.websockets import WebSocketState

from liveavatar_rt.serve.config import ServeConfig
from liveavatar_rt.serve.metrics import ServerStats


def start_text(image_png: bytes, rate: int = 16000) -> str:
    return json.dumps({"type": "start", "image": base64.b64encode(image_png).decode(),
                       "audio": {"format": "s16le", "sample_rate": rate, "channels": 1}})


class FakeWebSocket:
    """The starlette WebSocket surface Connection uses. receive() is a plain queue get, like
    uvicorn's; sends are recorded and handed to `on_send(ws, message)` (the scripted client)."""

    def __init__(self, on_send=None):
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list = []
        self.closed_with: tuple | None = None
        self.on_send = on_send
        self.application_state = self.client_state = WebSocketState.CONNECTED
        self.lost = False  # the transport lost the peer (what transport.py reports through the scope)
        self.scope = {"extensions": {"liveavatar.transport": {"closed": lambda: self.lost}}}

    def push_text(self, text: str) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})

    def push_bytes(self, data: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": data})

    def push_disconnect(self, code: int = 1006) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})

    async def receive(self) -> dict:
        msg = await self.inbox.get()
        if msg["type"] == "websocket.disconnect":
            self.client_state = WebSocketState.DISCONNECTED
        return msg

    async def send_text(self, text: str) -> None:
        msg = json.loads(text)
        self.sent.append(msg)
        if self.on_send is not None:
            self.on_send(self, msg)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = (code, reason or "")
        self.application_state = WebSocketState.DISCONNECTED
        self.push_disconnect(code)  # what uvicorn does: a pending receive() returns a disconnect

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent if isinstance(m, dict)]


class FakeEngine:
    capacity_limit = None
    fps, block_frames, audio_rate, note = 25, 12, 16000, ""


class FakeServer:
    """ServerState's surface: cfg, engine, stats, release() (counted)."""

    def __init__(self, **cfg):
        self.cfg = ServeConfig(**{"port": 0, **cfg})
        self.engine = FakeEngine()
        self.stats = ServerStats(1)
        self.released = 0
        self.released_at: float | None = None

    def release(self) -> None:
        self.released += 1
        self.released_at = time.monotonic()


class FakeSession:
    """Records every push (thread, samples); end_audio() makes the worker post "done"."""
    width = height = 64

    def __init__(self, worker, push_delay_s: float = 0.0):
        self.worker, self.push_delay_s = worker, push_delay_s
        self.pushes: list[tuple[str, int]] = []

    def push_audio(self, pcm, rate) -> None:
        self.pushes.append((threading.current_thread().name, len(pcm)))
        if self.push_delay_s:
            time.sleep(self.push_delay_s)  # a heavy push (a 96 kHz resample, a long message)

    def end_audio(self) -> None:
        self.worker.post(("done",))


class FakeWorker:
    """StreamWorker's surface with no model: start() posts "ready" at once. busy_s > 0 keeps it
    "alive" that long after stop() (a block in flight)."""
    push_delay_s = 0.0
    busy_s = 0.0
    last: "FakeWorker | None" = None

    def __init__(self, engine, request, post, name):
        self.post, self.name = post, name
        self.session = FakeSession(self, self.push_delay_s)
        self.stopped_at: float | None = None
        FakeWorker.last = self

    def start(self) -> None:
        self.post(("ready", self.session))

    def stop(self) -> None:
        self.stopped_at = self.stopped_at or time.monotonic()

    def is_alive(self) -> bool:
        return self.stopped_at is None or time.monotonic() < self.stopped_at + self.busy_s

    def join(self, timeout=None) -> None:
        deadline = time.monotonic() + (timeout or 0)
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
