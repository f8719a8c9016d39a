"""ASGI middleware that must see every request: API keys, the body size limit, draining.

Pure ASGI (no BaseHTTPMiddleware), so streams pass through untouched. Each applies to
every route but the health routes, so a new route cannot forget them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
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


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit: an HTTPException, so FastAPI's
    body reading passes it on (others become a 400) and the handlers answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes (max_body_bytes)"


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: at once from Content-Length, else as soon as
    the bytes read pass the limit (before the JSON is parsed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await send_error(send, 413, "body_too_large", _too_large(self.limit))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, "body_too_large", _too_large(self.limit))


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
