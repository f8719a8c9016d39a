"""Server-Sent Events from a request's event queue.

Every event already queued for the stream goes out in one write (a write costs ~9 us on
these machines, the JSON ~2 us): under load a stream's write carries all the tokens
that arrived since the last one. A client that disconnects cancels the request (the
ASGI server cancels this generator; the `finally` tells the engine).

A client that stays connected but stops reading fills its socket, and then uvicorn's
`send` waits (flow control) for as long as the client lets it. A send that waits longer
than `stream_send_timeout_s` gives the stream up: its generator is closed (which cancels
the request and frees its cache) and, under `kvserve serve`, the connection is dropped.
Under `kvserve serve` the kernel usually drops such a client first, after the same time
however little it holds (`server.connection_guard`), which ends the stream as a
disconnect does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from server.access_log import request_id_var
from server.connection_guard import abort_connection
from server.engine.engine import RequestStream
from server.engine.protocol import Event
from server.errors import error_body, internal_error_message

log = logging.getLogger("kvserve")
DEFAULT_SEND_TIMEOUT_S = 30.0

Format = Callable[[Event], str]
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str | None, data: Any) -> str:
    """One SSE message; `event` None writes a bare `data:` line (OpenAI's format)."""
    payload = data if isinstance(data, str) else _dumps(data)
    if event is None:
        return f"data: {payload}\n\n"
    return f"event: {event}\ndata: {payload}\n\n"


def is_end(event: Event) -> bool:
    return event[0] in ("done", "error")


async def drain(stream: RequestStream, fmt: Format) -> AsyncIterator[bytes]:
    """The stream's events formatted by `fmt`, batched per write; cancels the request if
    the consumer goes away before the end."""
    queue = stream.queue
    finished = False
    try:
        while not finished:
            event = await queue.get()
            parts: list[str] = []
            try:
                parts.append(fmt(event))
                finished = is_end(event)
                while not finished and not queue.empty():
                    event = queue.get_nowait()
                    parts.append(fmt(event))
                    finished = is_end(event)
            except Exception:
                # A bug, not the request's fault: the client gets an error event (never a
                # bare end of stream) with the id to quote; the log gets the traceback.
                request_id = request_id_var.get()
                log.exception("unhandled error in a stream (request %s)", request_id)
                body = error_body("internal_error", internal_error_message(request_id))
                yield ("".join(parts) + sse("error", body)).encode()
                return
            yield "".join(parts).encode()
    finally:
        if not finished:
            stream.cancel()


def send_timeout_s(scope: Scope) -> float:
    settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    return float(getattr(settings, "stream_send_timeout_s", DEFAULT_SEND_TIMEOUT_S))


class ClosingStreamingResponse(StreamingResponse):
    """Calls `on_close` however the response ends: finished, failed, the client gone
    (even before the body's generator ever ran, when its `finally` cannot), or the
    client stalled (see the module docstring). The body's generator is closed at the
    end, so its `finally` (which cancels the engine requests) has run by then.

    A stall is found by one timer per stream, looking every `timeout_s / 2` for a send
    waiting longer than `timeout_s` (a timer per send would cost as much as the write)."""

    def __init__(self, *args: Any, on_close: Callable[[], None] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        timeout_s = send_timeout_s(scope)
        waiting_since: float | None = None
        stalled = False

        async def watched_send(message: Message) -> None:
            nonlocal waiting_since
            waiting_since = loop.time()
            try:
                await send(message)
            finally:
                waiting_since = None

        def check() -> None:
            nonlocal watchdog, stalled
            if waiting_since is None or loop.time() - waiting_since < timeout_s:
                watchdog = loop.call_later(timeout_s / 2, check)
                return
            stalled = True
            host, port = scope.get("client") or ("?", 0)
            log.warning("stream to %s:%s given up: no data taken for %g s", host, port, timeout_s)
            # Dropping the connection ends the stream as a disconnect does; where the
            # server offers no way to, the stream's task is cancelled instead.
            if not abort_connection(scope) and task is not None:
                task.cancel()

        watchdog = loop.call_later(timeout_s / 2, check)
        try:
            await super().__call__(scope, receive, watched_send)
        except asyncio.CancelledError:
            if not stalled or task is None:
                raise
            task.uncancel()  # our own cancel: the stream is over, the request goes on
        finally:
            watchdog.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_close is not None:
                self.on_close()


def sse_response(
    body: AsyncIterator[bytes],
    headers: dict[str, str] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Any:
    return ClosingStreamingResponse(
        body,
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **(headers or {})},
        on_close=on_close,
    )
