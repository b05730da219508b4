"""Server settings: network, auth, who may connect, every limit and timeout, with the
defaults the CLI uses.

Limits exist so one client cannot take the process down: a huge image (decode memory), a
huge message (receive buffer), audio pushed far ahead of the stream (audio buffers), a flood
of small messages (event-loop time), a client that stops reading (segment queue), too many
sessions (CPU), a client that holds a slot and does nothing (timeouts). Past each limit the
client gets a JSON error naming the limit; the other sessions are untouched.

Who may connect: browsers send an Origin header on websockets and obey no other rule, so
without a check any page the user visits could drive a server on 127.0.0.1. By default only
the server's own page (same origin) and non-browser clients (no Origin) are let in;
`allowed_origins` adds others. The Host header must name this server (the bind address,
localhost, or `allowed_hosts`), which stops DNS-rebinding pages (their Host is their own name).
"""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
KiB = 1024


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing a model server is an explicit choice
    port: int = 8000
    token: str | None = None  # bearer token; None = no auth
    # extra page origins allowed to open /ws ("https://app.example:8443"; "*" = any). Same
    # origin and no Origin header (non-browser clients) are always allowed.
    allowed_origins: tuple[str, ...] = ()
    # extra Host names accepted besides the bind address and localhost ("avatar.lan"; "*" = any)
    allowed_hosts: tuple[str, ...] = ()
    max_sessions: int = 1  # concurrent sessions (the tiny preset runs one in real time on 2 cores)
    max_image_bytes: int = 8 * MiB  # encoded image file size
    max_image_pixels: int = 4096 * 4096  # decoded W * H, checked before decoding
    # one websocket message (the start message carries the image as base64); enforced by the
    # websocket layer as the frame header arrives, so an oversize message is never buffered
    max_message_bytes: int = 12 * MiB
    max_control_bytes: int = 64 * KiB  # a text message after "start" (ack, end, player)
    max_messages_per_s: float = 500.0  # per connection; past it reading pauses (throttle, not refusal)
    min_sample_rate: int = 8000
    max_sample_rate: int = 96000
    max_channels: int = 2
    max_audio_ahead_s: float = 30.0  # audio received but not yet rendered; past it reading pauses
    silence_after_s: float = 0.5  # no audio for this long during a session -> push silence in real time
    queue_segments: int = 8  # outgoing segments waiting for the socket; past it the oldest are dropped
    ack_window: int = 4  # segments sent and not yet acknowledged by the client
    late_slack_s: float = 0.5  # playout delay assumed when counting late frames
    # a slot is held from connect to close: each phase has its own deadline (codes in brackets)
    start_timeout_s: float = 10.0  # connect -> "start" message [start_timeout]
    audio_timeout_s: float = 10.0  # "ready" -> first audio message [audio_timeout]
    max_silence_s: float = 30.0  # silence streamed with no client audio for this long [idle_timeout]
    ack_timeout_s: float = 30.0  # segments waiting on an unacknowledged window this long [ack_timeout]
    seed: int = 0  # default noise seed of a session (the start message may set its own)

    def __post_init__(self) -> None:
        positive = ["max_sessions", "max_image_bytes", "max_image_pixels", "max_message_bytes", "max_control_bytes",
                    "min_sample_rate", "max_sample_rate", "max_channels", "queue_segments", "ack_window"]
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ServeConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ["max_audio_ahead_s", "silence_after_s", "start_timeout_s", "audio_timeout_s", "max_silence_s",
                     "ack_timeout_s", "max_messages_per_s"]:
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeConfig.{name} must be > 0, got {getattr(self, name)}")
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
        if isinstance(self.allowed_origins, str) or isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_origins and allowed_hosts are sequences of strings, not one string")
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))

    @property
    def transport_max_bytes(self) -> int:
        """The cap given to the websocket layer: the message limit itself. The layer refuses a
        larger message from its frame header (nothing of it is buffered) and, through
        transport.py, still answers with a JSON error naming the limit."""
        return self.max_message_bytes
