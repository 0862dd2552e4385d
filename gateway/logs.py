"""Request and session ids on every log line of a request; text or JSON lines.

The request-id middleware sets two context variables (the request id, and the
session id when the request names one: ``X-Parrot-Session`` or a session path);
asyncio tasks spawned while handling the request (semantic requests run in
background tasks) copy the context, so their lines carry the ids too. Log lines
never include prompt text or API keys at the default level.

``--log-format json`` writes one JSON object per line: ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, ``request_id`` and ``session_id`` where
known, ``exception`` with the traceback if any.
"""

from __future__ import annotations

import contextvars
import logging
import re
from datetime import datetime, timezone

import orjson

from common.ids import is_session_id

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

_SESSION_PATH = re.compile(r"^/(?:v1|ui|ui/api)/sessions/([^/]+)")


def session_of(path: str, header: str | None) -> str | None:
    """The session a request is about: its X-Parrot-Session header, else its path
    (``/v1/sessions/{sid}...``, ``/ui/sessions/{sid}``); only well-formed ids."""
    if header and is_session_id(header):
        return header
    m = _SESSION_PATH.match(path)
    return m.group(1) if m and is_session_id(m.group(1)) else None


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.session_id = session_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson escapes newlines, so a line is a record)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid and rid != "-":
            out["request_id"] = rid
        sid = getattr(record, "session_id", None)
        if sid:
            out["session_id"] = sid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
