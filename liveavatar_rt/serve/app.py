"""The ASGI app (FastAPI): the web page, /ws sessions, /metrics, /healthz.

    app = create_app(Engine.load("tiny"), ServeConfig(max_sessions=1))
    uvicorn.run(app, host="127.0.0.1", port=8000, ws_max_size=cfg.transport_max_bytes)

Admission: a session takes a slot when its websocket is accepted and authorised and frees it
after teardown; past `max_sessions` the client gets {"type": "error", "code": "busy"} and a
1013 (try again later) close at once, never a wait.
Auth (when a token is set): `Authorization: Bearer <token>` or `?token=<token>` (browsers
cannot set headers on a websocket). The page itself and /healthz are public; /ws and /metrics
need the token.
"""
from __future__ import annotations

import hmac
import itertools
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .config import ServeConfig
from .connection import Connection
from .metrics import ServerStats
from .protocol import ProtocolError

STATIC = Path(__file__).resolve().parent / "static"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class ServerState:
    def __init__(self, engine, cfg: ServeConfig):
        self.engine, self.cfg = engine, cfg
        limit = engine.capacity_limit
        self.capacity = min(cfg.max_sessions, limit) if limit else cfg.max_sessions
        self.stats = ServerStats(self.capacity)
        self.in_use = 0
        self._ids = itertools.count(1)

    def authorised(self, headers, query) -> bool:
        if self.cfg.token is None:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else query.get("token", "")
        return hmac.compare_digest(given.encode(), self.cfg.token.encode())

    def admit(self) -> str | None:
        """A session id, or None when full. Runs on the event loop, so check-and-take is atomic."""
        if self.in_use >= self.capacity:
            self.stats.totals["sessions_refused"] += 1
            return None
        self.in_use += 1
        self.stats.totals["sessions_started"] += 1
        return f"s{next(self._ids)}"

    def release(self) -> None:
        self.in_use -= 1


def create_app(engine, cfg: ServeConfig | None = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    server = ServerState(engine, cfg)
    app = FastAPI(title="liveavatar_rt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True, "sessions": server.in_use, "capacity": server.capacity, "note": engine.note}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not server.authorised(request.headers, request.query_params):
            server.stats.error("unauthorized")
            return JSONResponse({"type": "error", "code": "unauthorized", "message": "missing or wrong bearer token"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(server.stats.render(), media_type=PROMETHEUS_TEXT)

    @app.websocket("/ws")
    async def ws_session(ws: WebSocket) -> None:
        await ws.accept()
        conn_error = None
        if not server.authorised(ws.headers, ws.query_params):
            conn_error = ProtocolError("unauthorized", "missing or wrong bearer token (Authorization: Bearer <token> "
                                                       "or ?token=<token>)")
        else:
            sid = server.admit()
            if sid is None:
                conn_error = ProtocolError("busy", f"the server is at capacity ({server.capacity} sessions); "
                                                   "try again later")
        if conn_error is not None:
            server.stats.error(conn_error.code)
            try:
                await ws.send_json(conn_error.to_json())
                await ws.close(conn_error.close_code, conn_error.code)
            except (RuntimeError, OSError):
                pass  # the client left already
            return
        conn = Connection(ws, server, sid)
        try:
            await conn.run()
        finally:
            conn.release()

    return app
