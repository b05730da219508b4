"""Teardown helpers that never wait longer than they are told.

Why: a session's slot is freed at the end of its teardown, so anything teardown awaits
without a deadline can hold the slot forever. On Python 3.11, `asyncio.wait_for` returns a
message that arrives at the moment it is cancelled instead of raising, so a receive loop built
on it can swallow its cancellation and wait for the next message (issue 15: slots stuck for
300 s after "done"). Teardown therefore only ever *asks* tasks to stop and waits with a
deadline (`asyncio.wait(..., timeout=)` returns at the deadline whatever the tasks do); what is
still running then is left to end on its own when the socket closes.

    left = await settle(tasks, 1.0)            # cancel, wait <= 1 s, return the stragglers
    ok = await within(ws.close(1000), 2.0)     # run a coroutine with a deadline
    ok = await join_thread(worker, 1.0)        # poll a thread without blocking the loop
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

log = logging.getLogger("liveavatar_rt.serve")


def _retrieve(task: asyncio.Task) -> None:
    """Done callback of tasks teardown stopped waiting for: read their outcome, so asyncio does
    not log 'exception was never retrieved' for an error nobody can act on any more."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a stopped task ended with %r", task.exception())


async def settle(tasks, timeout: float) -> set[asyncio.Task]:
    """Cancel `tasks` and wait at most `timeout` s for them to end. Returns those still running
    (they got a cancel request and a done callback; nobody waits on them)."""
    tasks = {t for t in tasks if t is not None}
    for t in tasks:
        t.cancel()
    pending = {t for t in tasks if not t.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout)
    for t in tasks:
        t.add_done_callback(_retrieve)
    return pending


async def within(coro, timeout: float) -> bool:
    """Run `coro` for at most `timeout` s; True if it finished (its exception, if any, is raised)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        return False
    task.result()
    return True


async def join_thread(thread: threading.Thread, timeout: float, poll: float = 0.02) -> bool:
    """Wait up to `timeout` s for `thread` to end, sleeping on the loop (no executor thread is
    tied up, as asyncio.to_thread(thread.join) would). True if it ended."""
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
