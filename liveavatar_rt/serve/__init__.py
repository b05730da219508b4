"""Real-time streaming server: websocket sessions (audio in, fMP4 video + audio out), a web
page, Prometheus metrics. Network transport only: rendering is engine.Session (any layout).

    from liveavatar_rt.serve import Engine, ServeConfig, create_app, BackgroundServer
    with BackgroundServer(create_app(Engine.load("tiny"), ServeConfig(port=0)), ServeConfig(port=0)) as srv:
        print(srv.url)

Protocol: protocol.py. CLI: `liveavatar-rt serve` (cli.py).
"""
from __future__ import annotations

from .config import ServeConfig

__all__ = ["BackgroundServer", "Engine", "ServeConfig", "create_app"]


def __getattr__(name):
    # Lazy: the web stack (fastapi, uvicorn) is imported only when a server is built.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "BackgroundServer":
        from .server import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module 'liveavatar_rt.serve' has no attribute {name!r}")
