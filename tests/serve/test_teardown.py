"""Teardown and the receive path, on one event loop with a scripted client (fakes.py): the
orderings that real sockets hit only by chance are reproduced every time.

Issue 15, item 1: a client that acknowledges each segment at once and waits for the close.
Its ack for the last segment reaches the server in the same loop step as the teardown's
cancellation of the receive task; on Python 3.11 `asyncio.wait_for` then returns the message
instead of raising, the receive loop waits for the next one (300 s) and the slot stays taken.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from liveavatar_rt.serve import connection as connection_mod
from liveavatar_rt.serve.aio import settle, within
from liveavatar_rt.serve.connection import Connection

from .conftest import png_bytes
from .fakes import FakeServer, FakeWebSocket, FakeWorker, start_text


@pytest.fixture
def fake_worker(monkeypatch):
    monkeypatch.setattr(connection_mod, "StreamWorker", FakeWorker)
    monkeypatch.setattr(FakeWorker, "push_delay_s", 0.0)
    monkeypatch.setattr(FakeWorker, "busy_s", 0.0)
    return FakeWorker


def instant_acker(ws: FakeWebSocket, msg: dict) -> None:
    """The scripted client: on "ready" sends "end"; acks "done" at once (the ack lands in the
    same loop step as the server's teardown, like the page's ack of the last segment)."""
    if msg["type"] == "ready":
        ws.push_text('{"type": "end"}')
    elif msg["type"] == "done":
        ws.push_text('{"type": "ack", "seq": 0}')


async def _session(server, ws, deadline_s: float = 5.0):
    conn = Connection(ws, server, "s1")
    t0 = time.monotonic()
    await asyncio.wait_for(conn.run(), deadline_s)  # the test's own bound, not the server's
    return time.monotonic() - t0


def test_ack_arriving_with_the_cancellation_does_not_hold_the_slot(fake_worker):
    """Fails before the fix: run() never returned (asyncio.TimeoutError after 5 s)."""
    image = png_bytes(64, 64)

    async def main():
        for _ in range(5):
            server = FakeServer()
            ws = FakeWebSocket(on_send=instant_acker)
            ws.push_text(start_text(image))
            took = await _session(server, ws)
            assert ws.types() == ["ready", "done"]
            assert server.released == 1 and ws.closed_with == (1000, "")
            assert took < 3.0

    asyncio.run(main())


def test_settle_never_waits_on_a_task_that_ignores_cancellation():
    """The teardown's guarantee does not rest on cancellation working."""
    async def stubborn(release: asyncio.Event):
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallowed, as wait_for did on 3.11

    async def main():
        release = asyncio.Event()
        task = asyncio.create_task(stubborn(release))
        await asyncio.sleep(0)
        t0 = time.monotonic()
        left = await settle({task}, 0.3)
        assert left == {task} and 0.25 < time.monotonic() - t0 < 2.0
        release.set()
        await asyncio.sleep(0.01)
        assert task.done()
        assert await within(asyncio.sleep(10), 0.1) is False

    asyncio.run(main())


def test_disconnect_frees_the_slot_while_a_block_is_in_flight(fake_worker):
    """The worker is still busy (a block takes seconds on a slow machine): the slot is freed
    after a bounded grace, not after the block (issue 15 saw 5.8-7.7 s)."""
    fake_worker.busy_s = 30.0

    async def main():
        server = FakeServer()
        ws = FakeWebSocket(on_send=lambda ws, m: ws.push_disconnect() if m["type"] == "ready" else None)
        ws.push_text(start_text(png_bytes(64, 64)))
        t0 = time.monotonic()
        await _session(server, ws)
        assert server.released == 1 and server.released_at - t0 < 2.0  # run() itself may go on

    asyncio.run(main())


def test_audio_is_pushed_off_the_event_loop_in_bounded_chunks(fake_worker):
    """Heavy input (96 kHz stereo f32) is decoded and pushed in the session's own thread, one
    second at a time: the event loop keeps serving (issue 15: p99 465 ms on /healthz)."""
    fake_worker.push_delay_s = 0.05
    rate = 96000
    pcm = np.zeros((int(2.5 * rate), 2), "<f4").tobytes()

    async def main():
        server = FakeServer(max_message_bytes=32 * 2 ** 20)
        ticks = []

        async def ticker():  # the loop must keep running while the pushes are in progress
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        def script(ws, msg):
            if msg["type"] == "ready":
                ws.push_bytes(pcm)
                ws.push_text('{"type": "end"}')

        ws = FakeWebSocket(on_send=script)
        ws.inbox.put_nowait({"type": "websocket.receive",
                             "text": start_text(png_bytes(64, 64), rate).replace('"channels": 1', '"channels": 2')
                                                                       .replace("s16le", "f32le")})
        tick = asyncio.create_task(ticker())
        await _session(server, ws)
        tick.cancel()
        pushes = FakeWorker.last.session.pushes
        assert [n for _, n in pushes] == [rate, rate, rate // 2]
        assert all(name.startswith("liveavatar-audio-") for name, _ in pushes)
        assert len(ticks) >= 10  # the loop ticked during the 3 x 50 ms of pushing

    asyncio.run(main())


def test_a_message_flood_is_throttled_not_refused(fake_worker):
    """6000 acks at once: all handled, at most max_messages_per_s per second (the loop is
    yielded between messages), and the session still ends normally."""
    async def main():
        server = FakeServer(max_messages_per_s=4000.0)

        def script(ws, msg):
            if msg["type"] == "ready":
                for _ in range(6000):
                    ws.push_text('{"type": "ack", "seq": 0}')
                ws.push_text('{"type": "end"}')

        ws = FakeWebSocket(on_send=script)
        ws.push_text(start_text(png_bytes(64, 64)))
        took = await _session(server, ws, deadline_s=20.0)
        assert ws.types() == ["ready", "done"]
        assert took > 0.4  # 6000 messages past a 4000-message burst at 4000/s: >= 0.5 s

    asyncio.run(main())


def test_a_client_lost_while_reading_is_paused_is_noticed(fake_worker):
    """Audio far ahead of the render: the receive loop stops reading, so a disconnect would
    wait in the queue unread; the transport's report frees the slot (issue 15 saw 5.8-7.7 s)."""
    rate = 16000

    async def main():
        server = FakeServer(max_audio_ahead_s=1.0)

        def script(ws, msg):
            if msg["type"] == "ready":
                ws.push_bytes(np.zeros(3 * rate, "<i2").tobytes())  # 3 s ahead of a render that never comes
                ws.push_bytes(np.zeros(rate, "<i2").tobytes())  # left unread: reading is paused

        ws = FakeWebSocket(on_send=script)
        ws.push_text(start_text(png_bytes(64, 64)))
        task = asyncio.create_task(Connection(ws, server, "s1").run())
        await asyncio.sleep(0.5)
        assert not task.done() and ws.inbox.qsize() == 1  # paused, not reading
        ws.lost, t0 = True, time.monotonic()
        await asyncio.wait_for(task, 5)
        assert server.released == 1 and server.released_at - t0 < 1.5

    asyncio.run(main())
