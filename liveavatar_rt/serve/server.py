"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread
(tests, benchmarks, notebooks).

    with BackgroundServer(create_app(engine, cfg), cfg) as srv:   # port 0: a free port
        srv.url  # "http://127.0.0.1:40123"
"""
from __future__ import annotations

import threading
import time

import uvicorn

from .config import ServeConfig


def uvicorn_config(app, cfg: ServeConfig, log_level: str = "info") -> uvicorn.Config:
    """The websocket layer of transport.py (JSON errors for the refusals it makes), no
    permessage-deflate (a compressed message could inflate far past its wire size before being
    refused), the message cap enforced from frame headers, pings to notice dead peers, and the
    token redacted from uvicorn's log lines (logs.py)."""
    from .logs import install_redaction
    from .transport import JsonErrorWebSocketProtocol

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level, lifespan="off",
                            ws=JsonErrorWebSocketProtocol, ws_max_size=cfg.transport_max_bytes,
                            ws_per_message_deflate=False, ws_ping_interval=20.0, ws_ping_timeout=20.0,
                            timeout_graceful_shutdown=5)
    install_redaction()  # after Config(): it (re)configures uvicorn's loggers; filters survive that
    return config


class BackgroundServer:
    def __init__(self, app, cfg: ServeConfig, log_level: str = "warning", start_timeout: float = 30.0):
        self.server = uvicorn.Server(uvicorn_config(app, cfg, log_level))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.host, self.start_timeout = cfg.host, start_timeout
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="liveavatar-serve-uvicorn")
        self.port: int | None = None

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited before listening (port in use?)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {self.start_timeout} s")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
