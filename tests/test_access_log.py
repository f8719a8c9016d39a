"""server.access_log: request ids in and out, one log line per request, JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from server.access_log import (
    AccessLogMiddleware,
    JsonFormatter,
    configure_logging,
    request_id_var,
)

LOGGER = "kvserve.access"
CHUNKS = [b"event: token\ndata: 1\n\n", b"event: token\ndata: 2\n\n", b"event: done\n\n"]


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, str]:
        request.state.model = "text-lm"
        return {"request_id": request.state.request_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for chunk in CHUNKS:
                await asyncio.sleep(0)
                yield chunk

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    return app


def get(log_format: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    wrapped = AccessLogMiddleware(make_app(), log_format=log_format)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(call())


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_a_sane_request_id_is_echoed_and_handed_to_the_handler() -> None:
    response = get("text", "/echo", {"X-Request-ID": "client-42.a_b"})
    assert response.headers["x-request-id"] == "client-42.a_b"
    assert response.json() == {"request_id": "client-42.a_b"}


@pytest.mark.parametrize("given", [None, "has space", "x" * 129, "semi;colon", ""])
def test_a_missing_or_insane_request_id_is_replaced(given: str | None) -> None:
    response = get("text", "/echo", None if given is None else {"X-Request-ID": given})
    rid = response.headers["x-request-id"]
    assert rid != given and len(rid) == 32 and int(rid, 16) >= 0  # uuid4().hex
    assert response.json() == {"request_id": rid}


def test_text_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = get("text", "/echo", {"X-Request-ID": "abc"})
    [record] = access_records(caplog)
    method, path, status, duration, rid = record.getMessage().split()
    assert (method, path, status, rid) == ("GET", "/echo", "200", "abc")
    assert duration.endswith("ms") and float(duration[:-2]) >= 0
    assert record.access["bytes"] == len(response.content)


def test_json_line_has_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = get("json", "/echo")
    [record] = access_records(caplog)
    line = json.loads(record.getMessage())
    assert line["method"] == "GET" and line["path"] == "/echo" and line["status"] == 200
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["bytes"] == len(response.content)
    assert line["model"] == "text-lm"
    assert line["client"] == "127.0.0.1"
    assert line["level"] == "INFO" and line["ts"].endswith("Z")
    assert line["duration_ms"] >= 0 and line["completed"] is True
    # The JSON formatter passes the line through unchanged, without wrapping it again.
    assert json.loads(JsonFormatter().format(record)) == line


def test_a_stream_is_logged_once_at_its_end(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = get("json", "/stream")
    assert response.content == b"".join(CHUNKS)
    [record] = access_records(caplog)
    line = json.loads(record.getMessage())
    assert line["status"] == 200 and line["bytes"] == len(b"".join(CHUNKS))
    assert "model" not in line


def test_a_client_that_goes_away_mid_stream_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's send fails after the first chunk (client gone)."""
    wrapped = AccessLogMiddleware(make_app(), log_format="json")
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": "/stream", "raw_path": b"/stream",
        "query_string": b"", "root_path": "", "headers": [], "client": ("10.0.0.9", 5000),
        "server": ("test", 80),
    }  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client says nothing; its socket just breaks
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and len(sent) == 2:
            raise OSError("connection reset")  # after the start and one chunk
        sent.append(message)

    async def call() -> None:
        # Starlette reports the broken send as ClientDisconnect.
        with contextlib.suppress(OSError, ClientDisconnect):
            await wrapped(scope, receive, send)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(call())
    [record] = access_records(caplog)
    line = json.loads(record.getMessage())
    assert line["status"] == 200 and line["completed"] is False
    assert line["client"] == "10.0.0.9"
    assert line["bytes"] == len(CHUNKS[0]) == len(sent[1]["body"])
    assert request_id_var.get() is None  # reset after the request


def test_other_logs_carry_the_request_id_in_json() -> None:
    record = logging.LogRecord("kvserve.x", logging.WARNING, __file__, 1, "hi %s", ("there",), None)
    token = request_id_var.set("rid-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hi there" and line["level"] == "WARNING"
    assert line["logger"] == "kvserve.x" and line["request_id"] == "rid-1"


def test_a_handler_that_raises_is_logged_as_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = get("json", "/boom")
    assert response.status_code == 500 and "x-request-id" in response.headers
    [record] = access_records(caplog)
    assert json.loads(record.getMessage())["status"] == 500


def test_configure_logging_installs_one_handler() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging("text")
        configure_logging("json", "debug")
        ours = [h for h in root.handlers if h.get_name() == "kvserve"]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert logging.getLogger("kvserve").getEffectiveLevel() == logging.DEBUG
        with pytest.raises(ValueError, match="log_format"):
            configure_logging("yaml")
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)
        logging.getLogger("kvserve").setLevel(logging.NOTSET)
