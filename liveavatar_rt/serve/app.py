"""The ASGI app (FastAPI): the web page, /ws sessions, /metrics, /healthz.

    app = create_app(Engine.load("tiny"), cfg := ServeConfig(max_sessions=1))
    uvicorn.Server(server.uvicorn_config(app, cfg)).run()   # the websocket layer it needs

Admission: a session takes a slot when its websocket is accepted and authorised and frees it
after teardown; past `max_sessions` the client gets {"type": "error", "code": "busy"} and a
1013 (try again later) close at once, never a wait.
Auth (when a token is set): `Authorization: Bearer <token>` or `?token=<token>` (browsers
cannot set headers on a websocket). The page itself and /healthz are public; /ws and /metrics
need the token.
Access (origin.py): every request's Host must name this server (HTTP: 400 + JSON error
"bad_host"); a websocket from a page of another origin is refused ("bad_origin") unless
allowed. Checks on /ws run in this order, before a slot is taken: host, origin, token, capacity;
each refusal is a JSON error, a close, and a count in /metrics.
"""
from __future__ import annotations

import hmac
import itertools
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from starlette.websockets import WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .config import ServeConfig
from .aio import within
from .connection import SEND_GRACE_S, Connection
from .metrics import ServerStats
from .origin import AccessPolicy
from .protocol import ProtocolError

STATIC = Path(__file__).resolve().parent / "static"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class ServerState:
    def __init__(self, engine, cfg: ServeConfig):
        self.engine, self.cfg = engine, cfg
        limit = engine.capacity_limit
        self.capacity = min(cfg.max_sessions, limit) if limit else cfg.max_sessions
        self.stats = ServerStats(self.capacity)
        self.access = AccessPolicy(cfg)
        self.in_use = 0
        self._ids = itertools.count(1)

    def refusal(self, headers, query, websocket: bool, scheme: str = "ws") -> ProtocolError | None:
        """Why this request may not proceed (host, then origin for websockets, then token), or None."""
        host = headers.get("host")
        problem = self.access.host_problem(host)
        if problem:
            return ProtocolError("bad_host", problem)
        if websocket:
            problem = self.access.origin_problem(headers.get("origin"), host, scheme)
            if problem:
                return ProtocolError("bad_origin", problem)
        if not self.authorised(headers, query):
            return ProtocolError("unauthorized", "missing or wrong bearer token (Authorization: Bearer <token> "
                                                 "or ?token=<token>)")
        return None

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

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        problem = server.access.host_problem(request.headers.get("host"))
        if problem:
            server.stats.error("bad_host")
            return JSONResponse(ProtocolError("bad_host", problem).to_json(), status_code=400)
        return await call_next(request)

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
        conn_error = server.refusal(ws.headers, ws.query_params, websocket=True, scheme=ws.url.scheme)
        if conn_error is None:
            sid = server.admit()
            if sid is None:
                conn_error = ProtocolError("busy", f"the server is at capacity ({server.capacity} sessions); "
                                                   "try again later")
        if conn_error is not None:
            server.stats.error(conn_error.code)
            await within(_refuse(ws, conn_error), SEND_GRACE_S)
            return
        conn = Connection(ws, server, sid)
        try:
            await conn.run()
        finally:
            conn.release()

    return app


async def _refuse(ws: WebSocket, err: ProtocolError) -> None:
    """The JSON error, then the close (a client that already left gets nothing)."""
    try:
        await ws.send_json(err.to_json())
        await ws.close(err.close_code, err.code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left already
