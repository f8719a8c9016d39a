"""ASGI middleware that must see every request: API keys, the body's size and time
limits, draining.

Pure ASGI (no BaseHTTPMiddleware), so streams pass through untouched. Each applies to
every route but the health routes, so a new route cannot forget them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_body

EXEMPT_PREFIX = "/health/"


async def send_error(
    send: Send, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(error_body(error_type, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def key_owner(key: str) -> str:
    """The owner id of a key's sessions (a digest: the key itself is never stored)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def public_without_key(path: str) -> bool:
    """What answers without a key when keys are set: the health routes (probes), and the
    playground's page and static files, which hold no data (every API call it makes
    needs the key, which the page asks for). Everything else needs a key."""
    return path.startswith((EXEMPT_PREFIX, "/static/")) or path == "/"


class AuthMiddleware:
    """`Authorization: Bearer <key>` on every route but `public_without_key`, when keys
    are set. Keys are compared in constant time; the key's owner id goes to
    `scope["state"]["owner"]`."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or public_without_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        candidate = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for key in self.keys:  # no early exit: the time does not tell which key matched
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            await send_error(
                send,
                401,
                "unauthorized",
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        scope.setdefault("state", {})["owner"] = key_owner(candidate.decode())
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """The body passed the byte limit while it was being read."""


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes (max_body_bytes)"


def _has_body(scope: Scope) -> bool:
    """Whether the request says a body follows (HTTP/1.1: Content-Length or chunked)."""
    length = _header(scope, b"content-length")
    chunked = _header(scope, b"transfer-encoding") is not None
    return chunked or (length is not None and length != "0")


async def read_body(receive: Receive, limit: int) -> Message:
    """The whole body as one `http.request` message (or the `http.disconnect` that came
    first); raises BodyTooLarge as soon as the bytes read pass `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


class BodyLimitMiddleware:
    """Reads each request's body whole before the app runs, within two bounds: `limit`
    bytes (413 at once from Content-Length, else as soon as the bytes read pass it, before
    any JSON is parsed) and `timeout_s` seconds from the headers (408 and the connection
    closed: a body dribbled a byte at a time cannot hold a connection and a task). The app
    then reads the body from memory; FastAPI reads JSON bodies whole anyway."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await send_error(send, 413, "body_too_large", _too_large(self.limit))
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await read_body(receive, self.limit)
        except BodyTooLarge:
            await send_error(send, 413, "body_too_large", _too_large(self.limit))
            return
        except TimeoutError:
            await send_error(
                send, 408, "request_timeout",
                f"the request body did not arrive within {self.timeout_s:g} s "
                "(body_timeout_s); send the whole body at once",
                {"Connection": "close"},
            )  # fmt: skip
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, for streams that watch for it
            replayed = True
            return body

        await self.app(scope, replay, send)


class DrainMiddleware:
    """While the server drains (SIGTERM) or is not ready, new requests get 503; health
    routes still answer (readiness says 503 itself)."""

    def __init__(self, app: ASGIApp, state: Callable[[], Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIX):
            await self.app(scope, receive, send)
            return
        state = self.state()
        if getattr(state, "draining", False):
            await send_error(
                send, 503, "unavailable", "the server is shutting down; retry on another replica",
                {"Retry-After": "1", "Connection": "close"},
            )  # fmt: skip
            return
        state.active_requests = getattr(state, "active_requests", 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.active_requests -= 1


class ReplicaHeaderMiddleware:
    """`X-Replica: <name>` on every response, so a client (or a test) behind a router
    sees which replica answered."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (b"x-replica", name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)
