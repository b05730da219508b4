"""A small synchronous client of the streaming protocol (protocol.py), for tests, the bench
script and scripts that feed the server. Every wait is bounded by a timeout.

    with StreamClient("ws://127.0.0.1:8000/ws", token=None) as c:
        ready = c.start(open("face.png", "rb").read(), sample_rate=16000)
        c.send_audio(pcm_int16)          # any length; from any one thread while another reads
        c.end()
        for seg in c.segments(timeout=10):   # acks each one; returns after "done"
            seg.meta["frames"], seg.data
        c.done                               # the server's final stats
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


class ServerError(RuntimeError):
    """The server sent {"type": "error"}: .code and .message say why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Segment:
    meta: dict  # the "init" or "segment" header
    data: bytes  # the fMP4 bytes that followed it
    received_at: float  # time.monotonic()


class StreamClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, max_size: int = 64 * 2 ** 20):
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.timeout = timeout
        # legacy=True: a plain connection object (this class is the context manager)
        self.ws = connect(url, additional_headers=headers, open_timeout=timeout, close_timeout=timeout,
                          max_size=max_size, legacy=True)
        self.ready: dict | None = None
        self.init: Segment | None = None
        self.done: dict | None = None
        self.sample_format = "s16le"

    # ---- sending ---------------------------------------------------------------------------
    def start(self, image: bytes, sample_rate: int = 16000, fmt: str = "s16le", channels: int = 1, seed: int = 0,
              prompt: str | None = None, timeout: float | None = None) -> dict:
        """Send "start" and wait for "ready" (ServerError if the server refuses)."""
        self.sample_format = fmt
        try:
            self.send_json({"type": "start", "image": base64.b64encode(image).decode(), "prompt": prompt,
                            "seed": seed, "audio": {"format": fmt, "sample_rate": sample_rate, "channels": channels}})
        except ConnectionClosed:
            pass  # refused on connect (busy, unauthorized): the error message is read below
        msg = self.recv_json(timeout or max(self.timeout, 60.0))
        if msg.get("type") != "ready":
            raise RuntimeError(f"expected 'ready', got {msg}")
        self.ready = msg
        return msg

    def send_json(self, msg: dict) -> None:
        self.ws.send(json.dumps(msg))

    def send_audio(self, pcm: np.ndarray) -> None:
        """float32 [-1, 1] or int16 samples, converted to the format declared in start()."""
        pcm = np.asarray(pcm)
        if self.sample_format == "s16le":
            if pcm.dtype != np.int16:
                pcm = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
        else:
            pcm = pcm.astype("<f4") if pcm.dtype != np.int16 else (pcm / 32768.0).astype("<f4")
        self.ws.send(pcm.tobytes())

    def end(self) -> None:
        self.send_json({"type": "end"})

    def ack(self, seq: int) -> None:
        try:
            self.send_json({"type": "ack", "seq": seq})
        except ConnectionClosed:
            pass  # the last segment's ack can cross the server's "done" + close: harmless

    # ---- receiving -------------------------------------------------------------------------
    def recv(self, timeout: float | None = None):
        """The next message: dict (JSON) or bytes. TimeoutError after `timeout` s."""
        msg = self.ws.recv(timeout=self.timeout if timeout is None else timeout)
        return json.loads(msg) if isinstance(msg, str) else msg

    def recv_json(self, timeout: float | None = None) -> dict:
        msg = self.recv(timeout)
        if not isinstance(msg, dict):
            raise RuntimeError(f"expected a JSON message, got {len(msg)} bytes")
        if msg.get("type") == "error":
            raise ServerError(msg.get("code", "?"), msg.get("message", ""))
        return msg

    def next_segment(self, timeout: float | None = None, ack: bool = True) -> Segment | None:
        """The next media segment (the init segment is kept in .init and skipped); None after
        "done". Acknowledges each segment unless ack=False."""
        while True:
            meta = self.recv_json(timeout)
            if meta["type"] == "done":
                self.done = meta
                return None
            if meta["type"] not in ("init", "segment"):
                raise RuntimeError(f"unexpected message {meta}")
            data = self.recv(timeout)
            if not isinstance(data, bytes) or len(data) != meta["bytes"]:
                raise RuntimeError(f"the {meta['type']} payload does not match its header {meta}")
            seg = Segment(meta, data, time.monotonic())
            if meta["type"] == "init":
                self.init = seg
                continue
            if ack:
                self.ack(meta["seq"])
            return seg

    def segments(self, timeout: float | None = None, limit: int = 100000):
        """Iterate segments until "done" (at most `limit`, so a loop is always bounded)."""
        for _ in range(limit):
            seg = self.next_segment(timeout)
            if seg is None:
                return
            yield seg
        raise RuntimeError(f"more than {limit} segments")

    def close(self) -> None:
        try:
            self.ws.close()
        except (ConnectionClosed, OSError):
            pass

    def __enter__(self) -> "StreamClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
