"""A Python client for kvserve's HTTP API: `Client` (sync) and `AsyncClient` (asyncio).

Built on httpx and the standard library alone: it imports neither `server` nor
`model_core`, so it installs without torch (`pip install kvserve[client]`).

    from clients.kvserve_client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.generate("text-lm", prompt="def fib(n):", max_new_tokens=32)
        print(result.text, result.usage.completion_tokens)

        with client.generate("text-lm", prompt="import ", stream=True) as stream:
            for event in stream:  # TokenEvent(index, token, value, text)
                print(event.text, end="", flush=True)
        print(stream.result.finish_reason)  # the whole GenerateResult, after the last event

        with client.session("text-lm") as session:  # closed (DELETE) on exit
            session.generate(prompt="class Stack:\\n")
            print(session.generate(prompt="    def push(").usage.cached_tokens)  # > 0

    async with AsyncClient() as client:  # the same API, awaited
        result = await client.generate("text-lm", prompt="def ")
        async for event in await client.generate("text-lm", prompt="def ", stream=True): ...

Errors are `KvserveError` subclasses carrying the server's error object (`type`,
`message`, `param`). 429 and 503 answers, and connections that fail before the request
is sent, are retried `max_retries` times with exponential backoff, waiting at least the
server's `Retry-After`; a stream is never retried once it has yielded an event. The API
key comes from `api_key=` or the `KVSERVE_API_KEY` environment variable.

The pieces live in modules named for what they hold: `sync_client` (`Client`, `Stream`,
`Session`), `async_client` (`AsyncClient`, `AsyncStream`, `AsyncSession`), `results`
(the answers' dataclasses), `errors` (the exceptions), `sse` (the Server-Sent Events
decoder), `retry` (the retry policy), `request_bodies` and `settings` (what both clients
send and are configured with) and `stream_state` (what both streams share). This module
gathers the public names in one place.
"""

from __future__ import annotations

from clients.async_client import AsyncClient, AsyncSession, AsyncStream
from clients.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    IncompleteStream,
    KvserveError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    Unauthorized,
    Unavailable,
    error_class,
    error_from_body,
)
from clients.request_bodies import Input, Sampling
from clients.results import (
    Done,
    GenerateResult,
    Health,
    Limits,
    ModelInfo,
    PredictResult,
    SessionInfo,
    SpeculativeStats,
    TokenEvent,
    Usage,
)
from clients.retry import MAX_BACKOFF_S, RETRY_STATUSES, parse_retry_after, retry_delay
from clients.settings import API_KEY_ENV, DEFAULT_BASE_URL, USER_AGENT
from clients.sse import ServerSentEvent, SSEDecoder
from clients.sync_client import Client, Session, Stream

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "MAX_BACKOFF_S",
    "RETRY_STATUSES",
    "USER_AGENT",
    "AsyncClient",
    "AsyncSession",
    "AsyncStream",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Done",
    "GenerateResult",
    "Health",
    "IncompleteStream",
    "Input",
    "KvserveError",
    "Limits",
    "ModelInfo",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PredictResult",
    "RequestTimeout",
    "SSEDecoder",
    "Sampling",
    "ServerError",
    "ServerSentEvent",
    "Session",
    "SessionInfo",
    "SpeculativeStats",
    "Stream",
    "TokenEvent",
    "Unauthorized",
    "Unavailable",
    "Usage",
    "error_class",
    "error_from_body",
    "parse_retry_after",
    "retry_delay",
]
