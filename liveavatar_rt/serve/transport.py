"""The websocket layer under the app: uvicorn's websockets (sans-I/O) protocol with two changes.

1. permessage-deflate is off (server.uvicorn_config sets ws_per_message_deflate=False): with
   it, a 50 MB message of zeros is a few KB on the wire and the server inflates it before it can
   refuse it. Our payloads gain nothing from it (fMP4 and PCM barely compress).
2. A message the websocket layer refuses (larger than max_message_bytes, judged from its frame
   header before the payload is read; a text message that is not UTF-8; a broken frame) gets the
   same JSON error every other refusal gets, sent just before the close frame:
       {"type": "error", "code": "message_too_large", "message": "..."}
   The close reason is that code, so the app (connection.py) counts it in /metrics when it
   receives the disconnect.
3. After such a refusal the socket is half-closed (our data, then FIN) and the rest of the
   refused message is read and dropped for up to LINGER_S before the socket is closed. Closing
   at once, with the client's unread payload in the kernel buffer, makes the kernel send a
   reset, and a client that is still sending then loses the error and the close frame we sent
   (seen 4 times in 5 with a 500 KiB message).
4. A client that vanishes while the app has stopped reading (audio-ahead backpressure) is
   noticed: with reading paused the transport never sees the peer's FIN or reset, so every
   LIVENESS_S while paused a ping is written (the write to a dead peer fails within two of
   them), and the app can ask `transport_closed(scope)` instead of waiting on a receive.

Built on uvicorn 0.54's WebSocketsSansIOProtocol (its `conn` attribute) and websockets 17's
ServerProtocol.fail(); both versions are pinned in the Makefile and tests/serve/test_faults.py
checks the behaviour end to end.
"""
from __future__ import annotations

import json

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

LINGER_S = 2.0  # after a refusal, how long the rest of the refused message is read and dropped
LIVENESS_S = 0.5  # while the app is not reading, a ping this often (to notice a vanished peer)
SCOPE_KEY = "liveavatar.transport"  # scope["extensions"][SCOPE_KEY]["closed"]() -> bool


def transport_closed(scope) -> bool:
    """True once the connection is lost (even if the app has not received the disconnect yet).
    False when the server runs another websocket layer (no such extension)."""
    probe = scope.get("extensions", {}).get(SCOPE_KEY)
    return bool(probe and probe["closed"]())

# websocket close code the library fails with -> our error code (also the close reason)
TRANSPORT_ERRORS = {1009: "message_too_large", 1007: "bad_message", 1002: "protocol"}
_MESSAGES = {
    "message_too_large": "message exceeds the limit of {limit} bytes ({detail})",
    "bad_message": "text messages must be valid UTF-8 ({detail})",
    "protocol": "malformed websocket frame ({detail})",
}


class _JsonErrorServerProtocol(ServerProtocol):
    def fail(self, code: int, reason: str = "") -> None:
        name = TRANSPORT_ERRORS.get(int(code))
        if name is not None and self.state is OPEN:
            text = _MESSAGES[name].format(limit=self.max_message_size, detail=reason or "refused")
            self.send_frame(Frame(Opcode.TEXT, json.dumps({"type": "error", "code": name, "message": text}).encode()))
            reason = name
        super().fail(code, reason)


class JsonErrorWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn.Config(ws=JsonErrorWebSocketProtocol): see the module docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        old = self.conn
        self.conn = _JsonErrorServerProtocol(extensions=old.available_extensions,
                                             max_size=(old.max_message_size, old.max_fragment_size), logger=old.logger)
        self._refused = False
        self._liveness = None

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        if getattr(self, "scope", None) is not None:  # the app task is scheduled, not started yet
            self.scope["extensions"][SCOPE_KEY] = {"closed": lambda: self.disconnected}
            self._liveness = self.loop.call_later(LIVENESS_S, self._check_liveness)

    def _check_liveness(self) -> None:
        self._liveness = None
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return
        if self.read_paused and self.handshake_complete:
            try:
                self.conn.send_ping(b"live")
                self.transport.write(b"".join(self.conn.data_to_send()))
            except Exception as e:  # InvalidState while closing: the next look stops
                self.logger.debug("liveness ping not sent: %r", e)
        self._liveness = self.loop.call_later(LIVENESS_S, self._check_liveness)

    def connection_lost(self, exc) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        super().connection_lost(exc)

    def handle_parser_exception(self) -> None:
        """uvicorn calls this after every data_received() once the parser failed; the first call
        reports the disconnect to the app and sends what fail() queued (JSON error + close
        frame), the later ones only let the discarding parser drop the incoming bytes."""
        if self._refused:
            return
        self._refused = True
        self.stop_keepalive()
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code if close else 1006,
                               "reason": close.reason if close else ""})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # keep reading: the rest of the message is dropped, not left unread
            self.read_paused = False
            self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(LINGER_S, self.transport.close)
