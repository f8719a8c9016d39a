"""Running a request on the engine and answering: one JSON body, or an SSE stream.

Engine failures become the API's errors: a full queue 429 with Retry-After, a worker
that is restarting 503, a passed deadline 504, a request the worker refused 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from model_core.tokenizer import StreamDecoder
from server.access_log import request_id_var
from server.catalog import ServedModel
from server.engine.engine import Engine, RequestStream
from server.engine.pool import Overloaded, Unavailable
from server.engine.protocol import INTERNAL, INVALID, TIMEOUT, WORKER_DIED, Event, WorkRequest
from server.errors import ApiError, error_body, internal_error_message
from server.inputs import output_text
from server.metrics import StreamTimer
from server.routes import deps
from server.sse import drain, sse, sse_response

ERROR_STATUS = {INVALID: 422, TIMEOUT: 504, WORKER_DIED: 503}
log = logging.getLogger("kvserve.errors")


@contextlib.contextmanager
def engine_refusals() -> Iterator[None]:
    """The engine refusing a request at once becomes 429 (queue full) or 503 (no worker)."""
    try:
        yield
    except Overloaded as exc:
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        raise ApiError(429, "overloaded", str(exc), headers={"Retry-After": retry}) from exc
    except Unavailable as exc:
        raise ApiError(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from exc


def submit(engine: Engine, req: WorkRequest) -> RequestStream:
    """Queue the request; 429 / 503 at once when the engine cannot take it."""
    with engine_refusals():
        return engine.submit(req)


async def submit_session(
    engine: Engine,
    session_id: str,
    items: list[Any],
    owner: str | None,
    options: dict[str, Any],
) -> RequestStream:
    """Continue a session; 429 / 503 at once like `submit`."""
    with engine_refusals():
        return await engine.session_generate(session_id, items, owner, **options)


def error_from_event(event: Event) -> ApiError:
    error_type, message = event[2], event[3]
    status = ERROR_STATUS.get(error_type, 500)
    if error_type == INTERNAL:  # an unexpected exception in the worker: its text is for the log
        request_id = request_id_var.get()
        log.error("request %s (%s) failed in the worker: %s", request_id, event[1], message)
        message = internal_error_message(request_id)
    headers = {"Retry-After": "1"} if status == 503 else None
    return ApiError(status, error_type, message, headers=headers)


def done_fields(event: Event, served: ServedModel) -> dict[str, Any]:
    fields: dict[str, Any] = {"finish_reason": event[2], "usage": event[3]}
    speculative = event[4].get("speculative")
    if speculative is not None:
        fields["speculative"] = {
            k: speculative[k]
            for k in ("rounds", "proposed", "accepted", "rejected", "acceptance_rate", "alpha")
        }
    return fields


async def answer(
    request: Request,
    stream: RequestStream,
    served: ServedModel,
    streaming: bool,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The request's answer: SSE events, or one JSON body once it is done. A client that
    goes away cancels the request (at any point: before the stream's first byte too)."""
    timer = deps.timer(request, served.name)  # after submission: a refusal is not waiting
    extra = {"id": stream.request_id, "model": served.name, **(extra or {})}

    def gone() -> None:
        if not stream.ended:
            stream.cancel()
        timer.on_end(None, "gone")

    if streaming:
        body = drain(stream, _formatter(served, timer, extra))
        return sse_response(body, headers, on_close=gone)
    watcher = asyncio.create_task(_on_disconnect(request, gone))
    try:
        return await _collect(stream, served, timer, extra, headers)
    finally:
        watcher.cancel()


async def _on_disconnect(request: Request, action: Callable[[], None]) -> None:
    """Wait for the client to go away (the body is already read), then act."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    action()


async def _collect(
    stream: RequestStream,
    served: ServedModel,
    timer: StreamTimer,
    extra: dict[str, Any],
    headers: dict[str, str] | None,
) -> Response:
    async for event in stream:
        if event[0] == "token":
            timer.on_output()
        elif event[0] == "admitted":
            timer.metrics.observe_queue_time(timer.model, event[2])
        elif event[0] == "error":
            timer.on_end(None, event[2], None)
            raise error_from_event(event)
        else:
            timer.on_end(event[2], None, event[3], event[4].get("speculative"))
            body = {
                **extra,
                "outputs": stream.outputs,
                "text": output_text(served, stream.outputs),
                **done_fields(event, served),
            }
            return JSONResponse(body, headers=headers)
    raise AssertionError("a stream ends with done or error")


def _formatter(
    served: ServedModel, timer: StreamTimer, extra: dict[str, Any]
) -> Callable[[Event], str]:
    """Per stream: token events (with decoded text for byte-level models), then done or
    error; records the metrics as events pass."""
    decoder = StreamDecoder() if served.byte_level else None
    key = "token" if served.uses_tokens else "value"

    def fmt(event: Event) -> str:
        kind = event[0]
        if kind == "token":
            timer.on_output()
            data: dict[str, Any] = {"index": event[2], key: event[3]}
            if decoder is not None:
                data["text"] = decoder.feed(event[3])
            return sse("token", data)
        if kind == "admitted":
            timer.metrics.observe_queue_time(timer.model, event[2])
            return ""
        if kind == "done":
            timer.on_end(event[2], None, event[3], event[4].get("speculative"))
            return sse("done", {**extra, **done_fields(event, served)})
        timer.on_end(None, event[2], None)
        error = error_from_event(event)
        return sse("error", error_body(error.error_type, error.message))

    return fmt
