"""The client's exceptions, and the mapping from the server's error answers to them.

Every error is a `KvserveError` carrying the server's error object (`type`, `message`,
`param`); the subclass says what happened (`BadRequest`, `NotFound`, `Overloaded`, ...).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from clients.retry import parse_retry_after


class KvserveError(Exception):
    """An error answer of the server, or a failure to get an answer.

    `status` is the HTTP status (None when no answer came), `type`, `message` and
    `param` are the server's error object (`param` names the offending field, such as
    `input.0`), `body` is the whole parsed body and `retry_after_s` the server's
    Retry-After in seconds, if it sent one.

        try:
            client.generate("text-lm", input=[999])
        except BadRequest as error:
            print(error.param, error.message)  # input.0  input.0: token id 999 is outside ...
    """

    def __init__(
        self,
        status: int | None,
        type: str,
        message: str,
        param: str | None = None,
        body: Any = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.body = body
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        param = f" (param: {self.param})" if self.param else ""
        return f"{status}{self.type}: {self.message}{param}"


class BadRequest(KvserveError):
    """400 / 422: the request is invalid; `param` names the field."""


class Unauthorized(KvserveError):
    """401: no API key, or not one the server knows (see `KVSERVE_API_KEY`)."""


class NotFound(KvserveError):
    """404: no such model or session (a session may also have expired)."""


class Conflict(KvserveError):
    """409: the model is of the wrong kind for the route, or the session is busy."""


class PayloadTooLarge(KvserveError):
    """413: the body is over the server's `max_body_bytes`."""


class Overloaded(KvserveError):
    """429: the server's queues are full (raised once the retries are spent)."""


class Unavailable(KvserveError):
    """503: the server is starting, restarting a worker or draining."""


class ServerError(KvserveError):
    """Any other 5xx (504: the request passed its deadline)."""


class ConnectionFailed(KvserveError):
    """No answer: the connection was refused, broken or timed out."""


class RequestTimeout(ConnectionFailed):
    """The answer took longer than the client's `timeout`."""


class IncompleteStream(KvserveError):
    """A stream ended (or its connection broke) without its `done` event."""


_ERROR_CLASSES: dict[int, type[KvserveError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: BadRequest, 429: Overloaded, 503: Unavailable,
}  # fmt: skip
# An `event: error` carries no status: the status the server gives each type elsewhere.
_STREAM_ERROR_STATUS = {
    "invalid_request": 422, "overloaded": 429, "unavailable": 503, "worker_died": 503,
    "timeout": 504,
}  # fmt: skip


def error_class(status: int) -> type[KvserveError]:
    """The exception class for an HTTP error status."""
    if status in _ERROR_CLASSES:
        return _ERROR_CLASSES[status]
    return ServerError if status >= 500 else KvserveError


def error_from_body(status: int, body: Any, retry_after_s: float | None = None) -> KvserveError:
    """The exception for an error answer: its `{"error": {...}}` object, or (from a proxy,
    say) whatever text came."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        error_type = str(detail.get("type") or "error")
        message = str(detail.get("message") or "")
        param = detail.get("param")
        param = None if param is None else str(param)
    else:
        text = body if isinstance(body, str) else json.dumps(body)
        error_type, message, param = "http_error", f"HTTP {status}: {text[:500]}", None
    return error_class(status)(
        status, error_type, message, param, body, retry_after_s=retry_after_s
    )


def error_from_event(body: Any) -> KvserveError:
    """The exception for a stream's `event: error` (its data is the error object), with
    the status the server gives that error type elsewhere (500 for types it does not)."""
    error_type = (body.get("error") or {}).get("type") if isinstance(body, dict) else None
    return error_from_body(_STREAM_ERROR_STATUS.get(str(error_type), 500), body)


def response_error(response: httpx.Response) -> KvserveError:
    """The exception for an unsuccessful (and already read) response."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return error_from_body(
        response.status_code, body, parse_retry_after(response.headers.get("Retry-After"))
    )


def transport_error(exc: httpx.TransportError) -> ConnectionFailed:
    """The exception for a request that got no answer: `RequestTimeout` for a timeout."""
    kind = RequestTimeout if isinstance(exc, httpx.TimeoutException) else ConnectionFailed
    name = type(exc).__name__
    return kind(
        None, "timeout" if kind is RequestTimeout else "connection_failed", f"{name}: {exc}"
    )
