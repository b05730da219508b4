"""Keep the bearer token out of the logs.

Browsers cannot set headers on a websocket, so the page sends the token as `?token=...`, and
uvicorn's access and websocket log lines print the path with its query. A filter on those
loggers rewrites every `token` query value (however it is percent-encoded) to `***` in the
record's arguments, before any handler formats it; the arguments keep their shape, because
uvicorn's access formatter unpacks them.

    install_redaction()   # idempotent; server.uvicorn_config() calls it
"""
from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")
SECRET_KEYS = {"token", "access_token"}
_QUERY = re.compile(r"\?([^\s\"']*)")


def _redact_query(query: str) -> str:
    out = []
    for part in query.split("&"):
        key, eq, _ = part.partition("=")
        if eq and unquote_plus(key).strip().lower() in SECRET_KEYS:
            part = f"{key}=***"
        out.append(part)
    return "&".join(out)


def redact(text: str) -> str:
    """Every secret query value in `text` (a path, a request line, a whole message) -> ***."""
    if "?" not in text:
        return text
    return _QUERY.sub(lambda m: "?" + _redact_query(m.group(1)), text)


def _redact_value(value):
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        return True


def install_redaction() -> None:
    """Add the filter to uvicorn's loggers (once each). Logger filters run before the record
    reaches any handler, uvicorn's own or one a caller added."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
