"""Per-session and server-wide measurements, and their Prometheus text exposition.

Definitions (server clock, time.monotonic):
- time to first frame (TTFF): first audio message received -> first video segment written to
  the socket. The browser page shows its own TTFF (first audio sent -> first frame painted).
- steady FPS: frames written after the first segment / time since the first segment.
- dropped frames: frames of segments discarded because the client did not keep up (queue full).
- late frames: frames written after their playout time on a real-time clock started at the
  first segment with `late_slack_s` of playout delay (a player with that buffer would stall).
- shown TTFF / frames shown / player-dropped frames: reported by the client's player ("player"
  messages; the web page sends them): first audio sent -> first frame painted, on its clock.
All stats are touched from the event loop thread only (the worker thread posts to it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


@dataclass
class SessionStats:
    session: str
    late_slack_s: float
    fps: int = 25
    opened_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    first_audio_at: float | None = None
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    first_segment_frames: int = 0
    frames_generated: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    frames_late: int = 0
    segments_sent: int = 0
    bytes_sent: int = 0
    audio_s: float = 0.0  # client audio received
    silence_s: float = 0.0  # silence pushed while the client sent nothing
    block_compute_s: float = 0.0  # last block's model time
    shown_ttff_s: float | None = None  # player-reported (see the module docstring)
    frames_shown: int = 0
    player_dropped: int = 0

    def on_audio(self, seconds: float, silence: bool = False) -> None:
        if silence:
            self.silence_s += seconds
            return
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self.audio_s += seconds

    def on_player(self, ttff_s: float | None = None, frames_shown: int | None = None,
                  frames_dropped: int | None = None) -> None:
        if ttff_s is not None and self.shown_ttff_s is None:
            self.shown_ttff_s = ttff_s
        self.frames_shown = frames_shown if frames_shown is not None else self.frames_shown
        self.player_dropped = frames_dropped if frames_dropped is not None else self.player_dropped

    def on_sent(self, start_frame: int, frames: int, nbytes: int) -> None:
        """A segment with frames [start_frame, start_frame + frames) of the output was written."""
        now = time.monotonic()
        if self.first_sent_at is None:
            self.first_sent_at, self.first_segment_frames = now, frames
        self.last_sent_at = now
        # frame k is due at first_sent + slack + k / fps; count the ones already past due
        lateness = now - (self.first_sent_at + self.late_slack_s + start_frame / self.fps)
        self.frames_late += min(frames, max(0, int(lateness * self.fps) + 1)) if lateness > 0 else 0
        self.frames_sent += frames
        self.segments_sent += 1
        self.bytes_sent += nbytes

    @property
    def ttff_s(self) -> float | None:
        if self.first_sent_at is None or self.first_audio_at is None:
            return None
        return self.first_sent_at - self.first_audio_at

    @property
    def steady_fps(self) -> float | None:
        if self.first_sent_at is None or self.last_sent_at is None or self.last_sent_at <= self.first_sent_at:
            return None
        return (self.frames_sent - self.first_segment_frames) / (self.last_sent_at - self.first_sent_at)

    def summary(self) -> dict:
        r = lambda x: None if x is None else round(x, 4)  # noqa: E731
        return {"ttff_s": r(self.ttff_s), "fps": r(self.steady_fps), "frames_sent": self.frames_sent,
                "frames_generated": self.frames_generated, "dropped": self.frames_dropped,
                "late": self.frames_late, "audio_s": r(self.audio_s), "silence_s": r(self.silence_s),
                "block_compute_s": r(self.block_compute_s), "shown_ttff_s": r(self.shown_ttff_s),
                "frames_shown": self.frames_shown}


class ServerStats:
    """Totals since start plus the live sessions; `render()` gives the /metrics body."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.active: dict[str, SessionStats] = {}
        self.totals = {"sessions_started": 0, "sessions_refused": 0, "frames_sent": 0, "frames_dropped": 0,
                       "frames_late": 0}
        self.errors: dict[str, int] = {}
        self.ttff_sum, self.ttff_count = 0.0, 0
        self.shown_sum, self.shown_count = 0.0, 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def finish(self, st: SessionStats) -> None:
        """A session ended: fold its counts into the totals, drop its per-session series."""
        self.active.pop(st.session, None)
        self.totals["frames_sent"] += st.frames_sent
        self.totals["frames_dropped"] += st.frames_dropped
        self.totals["frames_late"] += st.frames_late
        if st.ttff_s is not None:
            self.ttff_sum += st.ttff_s
            self.ttff_count += 1
        if st.shown_ttff_s is not None:
            self.shown_sum += st.shown_ttff_s
            self.shown_count += 1

    def collect(self):
        """prometheus_client collector protocol: called by generate_latest()."""
        live = list(self.active.values())
        yield GaugeMetricFamily("liveavatar_sessions_active", "sessions open now", value=len(live))
        yield GaugeMetricFamily("liveavatar_sessions_capacity", "admission limit (max concurrent sessions)",
                                value=self.capacity)
        yield CounterMetricFamily("liveavatar_sessions_started", "sessions admitted",
                                  value=self.totals["sessions_started"])
        yield CounterMetricFamily("liveavatar_sessions_refused", "sessions refused as busy",
                                  value=self.totals["sessions_refused"])
        err = CounterMetricFamily("liveavatar_errors", "errors sent to clients, by code", labels=["code"])
        for code, n in sorted(self.errors.items()):
            err.add_metric([code], n)
        yield err
        for key, what in [("frames_sent", "frames written to clients"), ("frames_dropped", "frames dropped for slow clients"),
                          ("frames_late", "frames written after their playout time")]:
            total = self.totals[key] + sum(getattr(s, key) for s in live)
            yield CounterMetricFamily(f"liveavatar_{key}", what + " (all sessions)", value=total)
        yield GaugeMetricFamily("liveavatar_ttff_seconds_mean", "mean time to first frame of finished sessions",
                                value=self.ttff_sum / self.ttff_count if self.ttff_count else float("nan"))
        yield GaugeMetricFamily("liveavatar_ttff_shown_seconds_mean",
                                "mean player-reported time to first frame shown, finished sessions",
                                value=self.shown_sum / self.shown_count if self.shown_count else float("nan"))
        per = {name: GaugeMetricFamily(f"liveavatar_session_{name}", help_, labels=["session"]) for name, help_ in [
            ("ttff_seconds", "time to first frame (first audio received -> first segment written)"),
            ("ttff_shown_seconds", "player-reported time to first frame shown (first audio sent -> painted)"),
            ("frames_shown", "player-reported frames shown"),
            ("fps", "steady frames per second written"), ("frames_generated", "frames rendered"),
            ("frames_dropped", "frames dropped"),
            ("frames_late", "frames late"), ("block_compute_seconds", "last block's model time")]}
        for s in live:
            for name, value in [("ttff_seconds", s.ttff_s), ("ttff_shown_seconds", s.shown_ttff_s),
                                ("frames_shown", s.frames_shown), ("fps", s.steady_fps),
                                ("frames_generated", s.frames_generated), ("frames_dropped", s.frames_dropped),
                                ("frames_late", s.frames_late), ("block_compute_seconds", s.block_compute_s)]:
                if value is not None:
                    per[name].add_metric([s.session], value)
        yield from per.values()

    def render(self) -> bytes:
        return generate_latest(self._registry)
