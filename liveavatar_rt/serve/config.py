"""Server settings: network, auth and every limit, with the defaults the CLI uses.

Limits exist so one client cannot take the process down: a huge image (decode memory), a
huge message (receive buffer), audio pushed far ahead of the stream (audio buffers), a client
that stops reading (segment queue), too many sessions (CPU). Past each limit the client gets a
JSON error naming the limit; the other sessions are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing a model server is an explicit choice
    port: int = 8000
    token: str | None = None  # bearer token; None = no auth
    max_sessions: int = 1  # concurrent sessions (the tiny preset runs one in real time on 2 cores)
    max_image_bytes: int = 8 * MiB  # encoded image file size
    max_image_pixels: int = 4096 * 4096  # decoded W * H, checked before decoding
    max_message_bytes: int = 12 * MiB  # one websocket message (the start message carries the image)
    min_sample_rate: int = 8000
    max_sample_rate: int = 96000
    max_channels: int = 2
    max_audio_ahead_s: float = 30.0  # audio received but not yet rendered; past it reading pauses
    silence_after_s: float = 0.5  # no audio for this long during a session -> push silence in real time
    queue_segments: int = 8  # outgoing segments waiting for the socket; past it the oldest are dropped
    ack_window: int = 4  # segments sent and not yet acknowledged by the client
    late_slack_s: float = 0.5  # playout delay assumed when counting late frames
    start_timeout_s: float = 15.0  # the start message must arrive within this after connecting
    idle_timeout_s: float = 300.0  # a session with no client message for this long is closed
    seed: int = 0  # default noise seed of a session (the start message may set its own)

    def __post_init__(self) -> None:
        positive = ["max_sessions", "max_image_bytes", "max_image_pixels", "max_message_bytes", "min_sample_rate",
                    "max_sample_rate", "max_channels", "queue_segments", "ack_window"]
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ServeConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ["max_audio_ahead_s", "silence_after_s", "start_timeout_s", "idle_timeout_s"]:
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeConfig.{name} must be > 0 s, got {getattr(self, name)}")
        if self.late_slack_s < 0:
            raise ValueError(f"ServeConfig.late_slack_s must be >= 0, got {self.late_slack_s}")
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError(f"min_sample_rate {self.min_sample_rate} > max_sample_rate {self.max_sample_rate}")
        if self.max_message_bytes < self.max_image_bytes:
            raise ValueError("max_message_bytes must be >= max_image_bytes (the start message carries the image)")
        if not 0 < self.port < 65536 and self.port != 0:
            raise ValueError(f"port must be in 1..65535 (0: any free port), got {self.port}")
        if self.token is not None and not self.token:
            raise ValueError("token must be non-empty (or None for no auth)")

    @property
    def transport_max_bytes(self) -> int:
        """Hard cap given to the websocket layer: base64 makes the image 4/3 larger, and a
        message up to this size still reaches the app, which answers with a clear error."""
        return 2 * self.max_message_bytes
