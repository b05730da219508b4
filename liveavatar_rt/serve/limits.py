"""Per-connection limits that depend on time: the message-rate throttle and the deadlines of
each phase of a session. Pure logic on timestamps (time.monotonic), tested without sockets.

Deadlines (codes sent to the client; defaults in config.py):
    connect --start_timeout_s--> "start"          [start_timeout]
    "ready" --audio_timeout_s--> first audio      [audio_timeout]
    first silence streamed (no client audio) --max_silence_s--> audio      [idle_timeout]
    segments blocked on the ack window --ack_timeout_s--> an ack           [ack_timeout]
Together they bound how long a connection can hold a slot while doing nothing useful: before
this, a connection that sent "start" and no audio held its slot for the 300 s idle timeout.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ServeConfig
from .protocol import ProtocolError


class Throttle:
    """Token bucket: `rate` messages per second, bursts of up to `rate`. `delay(now)` takes a
    token and returns how long to wait first (0 when one was free). The connection sleeps that
    long before reading on, so a flood of small messages costs the event loop at most `rate`
    messages' work per second and TCP flow control slows the sender; nothing is refused."""

    def __init__(self, rate: float, now: float):
        self.rate, self.burst = float(rate), max(1.0, float(rate))
        self.tokens, self.at = self.burst, now

    def delay(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class Phase:
    """When each phase of one connection began (monotonic s); None = not reached."""
    opened_at: float
    started: bool = False  # the first message arrived (it is then parsed on our time)
    ready_at: float | None = None
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    silence_since: float | None = None  # silence streamed since (no client audio); None while audio flows
    ended: bool = False  # the client sent "end": only rendering and sending remain
    ack_wait_since: float | None = None  # the send loop has waited on the ack window since


def expired(p: Phase, cfg: ServeConfig, now: float) -> ProtocolError | None:
    """The deadline this connection has missed, if any."""
    if not p.started:
        if now - p.opened_at > cfg.start_timeout_s:
            return ProtocolError("start_timeout", f'no "start" message within {cfg.start_timeout_s:g} s '
                                                  "of connecting")
        return None
    if p.ready_at is not None and p.first_audio_at is None and not p.ended:
        if now - p.ready_at > cfg.audio_timeout_s:
            return ProtocolError("audio_timeout", f'no audio within {cfg.audio_timeout_s:g} s of "ready"')
    # measured from the first silence pushed, not the last audio: while reading is paused for
    # audio-ahead backpressure the client cannot send and no silence is streamed
    if p.silence_since is not None and not p.ended and now - p.silence_since > cfg.max_silence_s:
        return ProtocolError("idle_timeout", f"no audio for {cfg.max_silence_s:g} s (silence was streamed "
                                             "meanwhile); send audio, or \"end\" to finish")
    if p.ack_wait_since is not None and now - p.ack_wait_since > cfg.ack_timeout_s:
        return ProtocolError("ack_timeout", f"no segment acknowledged for {cfg.ack_timeout_s:g} s while "
                                            'segments were waiting; send {"type": "ack", "seq": n} for each')
    return None
