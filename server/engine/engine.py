"""The engine's front end, used from asyncio (the HTTP layer) or from tests in-process.

`submit` hands a `WorkRequest` to the pool and returns a `RequestStream`: an async
iterator of its events (token ..., then done or error). The pool's reader threads hand
each worker message to the event loop with ONE `call_soon_threadsafe`, which fans the
events out to the per-request queues.

Sessions: the session store holds each session's history; a session request carries the
history plus the new input, so the worker continues from its cache when it holds one and
rebuilds it by prefill when not (evicted, or the worker restarted). The history is
updated (input + outputs sent) before the stream's last event reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.engine.pool import WorkerPool
from server.engine.protocol import Event, Sampling, WorkRequest
from server.engine.settings import EngineSettings
from server.model_repository import ModelEntry, ModelRepository
from server.sessions import (
    InMemorySessionStore,
    Session,
    SessionConflictError,
    SessionStore,
    run_sweeper,
)

log = logging.getLogger("kvserve.engine")


class EngineError(Exception):
    """A request ended with an error event."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class SessionNotFound(LookupError):
    pass


class SessionBusy(RuntimeError):
    pass


class WrongModelKind(ValueError):
    pass


@dataclass
class Result:
    outputs: list[Any]
    finish_reason: str
    usage: dict[str, int]
    extra: dict[str, Any]


@dataclass
class RequestStream:
    """Events of one request, in order; the last is `done` or `error`."""

    request_id: str
    cancel_fn: Callable[[str], None]
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    outputs: list[Any] = field(default_factory=list)
    on_end: Callable[[RequestStream, Event], Awaitable[None]] | None = None
    ended: bool = False

    def cancel(self) -> None:
        """Stop the request: the worker drops it within one decode step."""
        if not self.ended:
            self.cancel_fn(self.request_id)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.queue.get()
            yield event
            if event[0] in ("done", "error"):
                return

    async def result(self) -> Result:
        """Wait for the end; raises EngineError on an error event."""
        async for event in self:
            if event[0] == "error":
                raise EngineError(event[2], event[3])
            if event[0] == "done":
                return Result(self.outputs, event[2], event[3], event[4])
        raise AssertionError("unreachable")


class Engine:
    def __init__(
        self,
        settings: EngineSettings | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.repository = ModelRepository(self.settings.model_dir)
        scan = self.repository.scan()
        wanted = self.settings.models
        self.models: dict[str, ModelEntry] = {
            n: e for n, e in scan.entries.items() if wanted is None or n in wanted
        }
        self.scan_errors = scan.errors
        self.store: SessionStore = store or InMemorySessionStore(
            max_sessions=self.settings.max_sessions
        )
        self.pool = WorkerPool(self.settings, self._deliver)
        self._streams: dict[str, RequestStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[None]] = set()

    # Life cycle.
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.pool.start)
        self._sweeper = asyncio.create_task(
            run_sweeper(self.store, self.settings.sweep_interval_s, self._on_expired)
        )

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await asyncio.to_thread(self.pool.stop)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return self.pool.ready

    # Requests.
    def submit(self, req: WorkRequest) -> RequestStream:
        """Queue a request (raises `Overloaded` / `Unavailable` at once)."""
        if req.deadline is None:
            req.deadline = time.time() + self.settings.request_timeout_s
        stream = RequestStream(req.id, self.pool.cancel)
        self._streams[req.id] = stream
        try:
            self.pool.submit(req)
        except Exception:
            del self._streams[req.id]
            raise
        return stream

    def request(self, op: str, model: str, inputs: list[Any], **options: Any) -> RequestStream:
        """`submit` with a fresh request id; options are `WorkRequest` fields, and
        `temperature`/`top_k`/`top_p`/`seed` for its sampling."""
        sampling = Sampling(
            **{k: options.pop(k) for k in ("temperature", "top_k", "top_p", "seed") if k in options}
        )
        req = WorkRequest(new_request_id(), op, model, inputs, sampling=sampling, **options)  # type: ignore[arg-type]
        return self.submit(req)

    async def predict(self, model: str, sequences: list[list[list[float]]]) -> list[list[float]]:
        result = await self.request("predict", model, sequences).result()
        return result.extra["outputs"]

    # Sessions.
    async def open_session(
        self, model: str, owner: str | None = None, ttl_s: float | None = None
    ) -> Session:
        entry = self.models.get(model)
        if entry is None:
            raise KeyError(model)
        if entry.config.kind != "autoregressive":
            raise WrongModelKind(
                f"sessions continue autoregressive models; {model!r} is {entry.config.kind}"
            )
        return await self.store.create(model, owner, ttl_s or self.settings.session_ttl_s)

    async def session_generate(
        self, session_id: str, inputs: list[Any], owner: str | None = None, **options: Any
    ) -> RequestStream:
        """Append `inputs` to the session and continue it; the history gains the inputs
        and every output sent (also when the request is cancelled or fails midway)."""
        session = await self.store.get(session_id, owner)
        if session is None:
            raise SessionNotFound(session_id)
        if session.busy:
            raise SessionBusy(f"session {session_id} is already generating")
        session.busy = True
        await self.store.save(session)
        history = list(session.history)
        try:
            stream = self.request(
                "generate",
                session.model,
                history + list(inputs),
                session_id=session_id,
                history_len=len(history),
                **options,
            )
        except Exception:
            session.busy = False
            await self.store.save(session)
            raise

        async def on_end(stream: RequestStream, event: Event) -> None:
            session.history = history + list(inputs) + list(stream.outputs)
            session.busy = False
            try:
                await self.store.save(session)
            except LookupError:
                pass  # closed or expired meanwhile: nothing to keep
            except SessionConflictError:
                log.warning("session %s: another request appended first; turn dropped", session.id)

        stream.on_end = on_end
        return stream

    async def close_session(self, session_id: str, owner: str | None = None) -> bool:
        closed = await self.store.delete(session_id, owner)
        if closed:
            self.pool.drop_session(session_id)
        return closed

    def _on_expired(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            self.pool.drop_session(session_id)

    # Events from the pool's reader threads.
    def _deliver(self, by_request: dict[str, list[Event]]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, by_request)

    def _fan_out(self, by_request: dict[str, list[Event]]) -> None:
        for request_id, events in by_request.items():
            stream = self._streams.get(request_id)
            if stream is None:
                continue
            for event in events:
                if event[0] == "token":
                    stream.outputs.append(event[3])
                elif event[0] in ("done", "error"):
                    del self._streams[request_id]
                    stream.ended = True
                    if stream.on_end is not None:
                        task = asyncio.ensure_future(_end_then_put(stream, event))
                        self._endings.add(task)
                        task.add_done_callback(self._endings.discard)
                        break
                stream.queue.put_nowait(event)

    def stats(self) -> dict[str, Any]:
        return {"workers": self.pool.stats(), "streams": len(self._streams)}


async def _end_then_put(stream: RequestStream, event: Event) -> None:
    assert stream.on_end is not None
    try:
        await stream.on_end(stream, event)
    finally:
        stream.queue.put_nowait(event)


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex
