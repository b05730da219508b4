"""Who may talk to the server: the Host header and, on /ws, the Origin header.

Why both: a browser lets any page open a websocket to 127.0.0.1 and sends the page's origin
along, so the Origin check stops other sites (cross-site websocket hijacking). A DNS-rebinding
page is same-origin with itself (its name now resolves to 127.0.0.1), so the Origin check
passes; but the browser sends its name as Host, which the Host check refuses.

    policy = AccessPolicy(cfg)
    policy.host_problem("127.0.0.1:8000")                          # None: fine
    policy.origin_problem("http://evil.example", "127.0.0.1:8000") # a sentence: refuse

Rules:
- Host: its name (port ignored) must be localhost, a loopback address, the bind address, or in
  cfg.allowed_hosts ("*" allows any). Bound to every interface (0.0.0.0 / ::), any IP literal
  is accepted too: the machine's own addresses are not known here, and a rebinding page can
  only send a name, never an IP literal of ours.
- Origin: absent (a non-browser client: it chose the server itself) is allowed; otherwise its
  host:port must equal Host's (the server's own page), or the origin be in
  cfg.allowed_origins ("*" allows any). "null" (sandboxed frames, file://) is refused unless listed.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .config import ServeConfig

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARD_BINDS = {"", "0.0.0.0", "::"}
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """'Example.COM.:8000' -> ('example.com', 8000); '[::1]' -> ('::1', None); None if malformed."""
    value = value.strip()
    if not value or any(c in value for c in "/@?# \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        name, port = parts.hostname, parts.port  # .port raises ValueError on a bad port
    except ValueError:
        return None
    if not name:
        return None
    return name.rstrip(".").lower(), port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def normalise_origin(origin: str) -> str:
    """'HTTP://Example.com:80/' -> 'http://example.com' (scheme://host[:port], default port dropped)."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        return origin.strip().lower()
    if not parts.scheme or not parts.hostname:
        return origin.strip().lower()
    host = parts.hostname.rstrip(".").lower()
    host = f"[{host}]" if ":" in host else host
    keep = port is not None and port != DEFAULT_PORTS.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if keep else "")


class AccessPolicy:
    def __init__(self, cfg: ServeConfig):
        self.any_host = "*" in cfg.allowed_hosts
        self.any_origin = "*" in cfg.allowed_origins
        bind = cfg.host.strip("[]").lower()
        self.wildcard_bind = bind in WILDCARD_BINDS
        self.hosts = set(LOOPBACK_NAMES) | {h.strip("[]").rstrip(".").lower() for h in cfg.allowed_hosts}
        if not self.wildcard_bind:
            self.hosts.add(bind)
        self.origins = {normalise_origin(o) for o in cfg.allowed_origins if o != "*"}

    def host_problem(self, host: str | None) -> str | None:
        """None when the Host header names this server, else why not."""
        if self.any_host:
            return None
        parsed = split_host(host or "")
        if parsed is None:
            return "missing or malformed Host header"
        name, _ = parsed
        if name in self.hosts or (self.wildcard_bind and _is_ip(name)) or _is_loopback_ip(name):
            return None
        return (f"Host {name!r} is not a name of this server (start it with --allow-host {name} "
                "if it is)")

    def origin_problem(self, origin: str | None, host: str | None, scheme: str = "ws") -> str | None:
        """None when a page from `origin` may open a websocket here, else why not."""
        if origin is None or self.any_origin:
            return None
        norm = normalise_origin(origin)
        if norm in self.origins:
            return None
        own = split_host(host or "")
        parts = urlsplit(origin.strip())
        try:
            o_port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            o_port = None
        if own is not None and parts.hostname:
            name, port = own
            port = port or DEFAULT_PORTS.get(scheme)
            if parts.hostname.rstrip(".").lower() == name and o_port == port:
                return None  # the server's own page
        return (f"websocket from origin {origin[:100]!r} refused: only this server's own page may connect "
                "(start the server with --allow-origin <origin> to allow another)")


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
