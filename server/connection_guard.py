"""uvicorn's httptools protocol with the connection guards uvicorn lacks (`kvserve
serve` runs it; uvicorn has a keep-alive timeout but none for a request's headers or
body, so a client that dribbles bytes holds a connection and a task forever, and none
for a client that stops reading its response):

- A request's headers must arrive within `timeout_s` of its first byte (or of the
  connection opening): slower ones (slowloris) get 408 and the connection is closed.
- A body still arriving `timeout_s` after the headers once the app has answered (413
  from Content-Length, 401) closes the connection; until then uvicorn reads and drops
  it, so a client that sends a too-large body at full speed still reads the 413. While
  the app waits for a body, `BodyLimitMiddleware` answers 408 itself.
- A client that takes none of its response for `send_timeout_s` is dropped by the
  kernel (TCP_USER_TIMEOUT, on Linux: data unacknowledged, or unsent for a zero window,
  that long). The kernel holds up to 4 MiB a connection (net.ipv4.tcp_wmem) before the
  app's own `send` waits, so without it a stream's stall would show only megabytes
  late. Dropping the connection cancels the request like any disconnect.
- The app can drop a connection at once through `scope["extensions"][ABORT]["abort"]`
  (`server.sse`, for a stalled stream): uvicorn's own close waits to flush first, which
  for a client that reads nothing is forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

from server.errors import error_body

ABORT = "kvserve.abort"
RECHECK_S = 0.5  # a late body the app has not answered yet: look again this often


def guarded_protocol(timeout_s: float, send_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`: `timeout_s` for headers and
    bodies (the `body_timeout_s` setting), `send_timeout_s` for a client that reads
    nothing (`stream_send_timeout_s`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    user_timeout_ms = max(1, round(send_timeout_s * 1000))

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
                with contextlib.suppress(OSError):  # not TCP (a Unix socket): no such option
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
            self._arm(timeout_s, self._headers_late)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["extensions"] = {ABORT: {"abort": self.transport.abort}}  # type: ignore[typeddict-unknown-key]
            self._arm(timeout_s, self._headers_late)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(timeout_s, self._body_late)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _headers_late(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            message = f"the request headers did not arrive within {timeout_s:g} s (body_timeout_s)"
            body = json.dumps(error_body("request_timeout", message)).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

        def _body_late(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.response_complete:
                self.transport.close()  # answered already; nobody reads the rest
            else:
                self._arm(RECHECK_S, self._body_late)

        def _arm(self, delay_s: float, action: Callable[[], None]) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay_s, action)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    return GuardedHttpToolsProtocol


def abort_connection(scope: dict[str, Any] | Any) -> bool:
    """Drop the request's connection at once (unsent data is discarded); False where
    the server offers no way (not `kvserve serve`: the test client, another server)."""
    abort = scope.get("extensions", {}).get(ABORT, {}).get("abort")
    if abort is None:
        return False
    abort()
    return True
