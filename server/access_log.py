"""Access logs: one line per HTTP request, tagged with a request id; JSON or text logging.

`AccessLogMiddleware` is plain ASGI (not Starlette's BaseHTTPMiddleware, which buffers
streams through a task group): it picks the request id, hands it to handlers in
`scope["state"]["request_id"]` (`request.state.request_id` in FastAPI), echoes it in
`X-Request-ID`, and logs when the last body byte is sent — for a stream, at its end — or,
when the client went away or the app raised, when the app returns.

A handler that sets `request.state.model` gets the model into the line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG_FORMATS = ("text", "json")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEADER = b"x-request-id"

# The id of the request being served, for log lines written while serving it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kvserve_request_id", default=None
)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is a sane token, else a fresh one."""
    for name, value in headers:
        if name.lower() == _HEADER:
            given = value.decode("latin-1")
            if _SANE_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class AccessLogMiddleware:
    def __init__(
        self, app: ASGIApp, log_format: str = "text", logger_name: str = "kvserve.access"
    ) -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {log_format!r}")
        self.app = app
        self.json = log_format == "json"
        self.logger = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_from(scope.get("headers", []))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 0
        sent = 0
        done = False
        echo = (_HEADER, request_id.encode("latin-1"))

        async def send_logged(message: Message) -> None:
            nonlocal status, sent, done
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, echo]}
            await send(message)
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))  # counted once the server took it
                if not message.get("more_body", False):
                    done = True
                    self._log(scope, status, start, sent, request_id, completed=True)

        try:
            await self.app(scope, receive, send_logged)
        except BaseException:
            status = status or 500  # the server answers 500 when nothing was sent
            raise
        finally:
            if not done:
                self._log(scope, status, start, sent, request_id, completed=False)
            request_id_var.reset(token)

    def _log(
        self, scope: Scope, status: int, start: float, sent: int, request_id: str, completed: bool
    ) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        duration_ms = round((time.perf_counter() - start) * 1000, 3)
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": duration_ms,
            "bytes": sent,
            "client": client[0] if client else None,
            "request_id": request_id,
            "completed": completed,  # false: the client went away or the app raised
        }
        model = scope.get("state", {}).get("model")
        if model is not None:
            fields["model"] = model
        if self.json:
            line = {"ts": _utc_now(), "level": "INFO", "logger": self.logger.name, **fields}
            message = json.dumps(line, separators=(",", ":"))
        else:
            message = f"{fields['method']} {fields['path']} {status} {duration_ms}ms {request_id}"
        self.logger.info(message, extra={"access": fields, "preformatted_json": self.json})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ request_id, exc_info).

    A record whose message is already a JSON line (the access log in json mode) is passed
    through as is."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "preformatted_json", False):
            return record.getMessage()
        line: dict[str, Any] = {
            "ts": _utc_now(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(log_format: str, level: str = "INFO") -> None:
    """Send all logs (kvserve.*, server.*, and libraries that propagate) to stderr, as JSON
    lines or text; calling it again replaces the handler it installed."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("kvserve")
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "kvserve"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("kvserve").setLevel(level.upper())


def _utc_now(timestamp: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
