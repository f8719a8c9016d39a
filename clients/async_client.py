"""The asyncio client: `AsyncClient`, `AsyncStream` and `AsyncSession`, the same methods
as the sync client's, awaited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from typing import Any, Literal, Self, Unpack, overload

import httpx

from clients.errors import NotFound, Unavailable, response_error, transport_error
from clients.request_bodies import Input, Sampling, api_path, generation_body, session_body
from clients.results import (
    Done,
    GenerateResult,
    Health,
    ModelInfo,
    PredictResult,
    SessionInfo,
    TokenEvent,
    models_from_json,
)
from clients.settings import DEFAULT_BASE_URL, ClientSettings
from clients.stream_state import StreamState


class AsyncClient(ClientSettings):
    """`Client` for asyncio: every method is awaited, streams are `AsyncStream`s.

    async with AsyncClient() as client:
        result = await client.generate("text-lm", prompt="def ")
        async with await client.generate("text-lm", prompt="def ", stream=True) as stream:
            async for event in stream:
                print(event.text, end="")
        async with client.session("text-lm") as session:
            await session.generate(prompt="x = ")
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, backoff_s)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(
        self, method: str, path: str, body: Any = None, *, stream: bool = False, retry: bool = True
    ) -> httpx.Response:
        attempt = 0
        while True:
            request = self.http.build_request(method, path, json=body)
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                wait = self._retry_wait(attempt, retry, exc)
                if wait is None:
                    raise transport_error(exc) from exc
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                error = response_error(response)
                wait = self._retry_wait(attempt, retry, error)
                if wait is None:
                    raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        return (await self._send(method, path, body)).json()

    async def _generation(self, path: str, body: dict[str, Any]) -> GenerateResult | AsyncStream:
        if body["stream"]:
            return AsyncStream(await self._send("POST", path, body, stream=True))
        return GenerateResult.from_json(await self._json("POST", path, body))

    async def health(self) -> Health:
        """See `Client.health`."""
        try:
            await self._send("GET", "/health/ready", retry=False)
        except Unavailable as error:
            return Health(False, error.type, error.message)
        return Health(True, "ready")

    async def models(self) -> list[ModelInfo]:
        return models_from_json(await self._json("GET", "/v1/models"))

    async def model(self, model_id: str) -> ModelInfo:
        return ModelInfo.from_json(await self._json("GET", api_path("v1", "models", model_id)))

    async def predict(self, model: str, inputs: list[list[list[float]]]) -> PredictResult:
        body = {"model": model, "inputs": inputs}
        return PredictResult.from_json(await self._json("POST", "/v1/predict", body))

    @overload
    async def generate(
        self, model: str, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    async def generate(
        self, model: str, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> AsyncStream: ...  # fmt: skip
    async def generate(
        self, model: str, prompt: str | None = None, input: Input | None = None, *,
        stream: bool = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult | AsyncStream:  # fmt: skip
        """See `Client.generate`."""
        body = generation_body(sampling, stream, model=model, prompt=prompt, input=input)
        return await self._generation("/v1/generate", body)

    @overload
    async def seq2seq(
        self, model: str, input: list[int], *, start: list[int] | None = None,
        stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    async def seq2seq(
        self, model: str, input: list[int], *, start: list[int] | None = None,
        stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> AsyncStream: ...  # fmt: skip
    async def seq2seq(
        self, model: str, input: list[int], *, start: list[int] | None = None,
        stream: bool = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult | AsyncStream:  # fmt: skip
        """See `Client.seq2seq`."""
        body = generation_body(sampling, stream, model=model, input=input, start=start)
        return await self._generation("/v1/seq2seq", body)

    @overload
    async def speculative(
        self, model: str, draft_model: str, prompt: str | None = None, input: Input | None = None,
        *, draft_steps: int = 4, stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    async def speculative(
        self, model: str, draft_model: str, prompt: str | None = None, input: Input | None = None,
        *, draft_steps: int = 4, stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> AsyncStream: ...  # fmt: skip
    async def speculative(
        self, model: str, draft_model: str, prompt: str | None = None, input: Input | None = None,
        *, draft_steps: int = 4, stream: bool = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult | AsyncStream:  # fmt: skip
        """See `Client.speculative`."""
        body = generation_body(
            sampling, stream, model=model, draft_model=draft_model, draft_steps=draft_steps,
            prompt=prompt, input=input,
        )  # fmt: skip
        return await self._generation("/v1/speculative", body)

    def session(self, model: str, ttl_s: float | None = None) -> _OpeningSession:
        """Open a session: `session = await client.session(...)`, or
        `async with client.session(...) as session:` to close it on exit."""
        return _OpeningSession(self, model, ttl_s)

    async def _open_session(self, model: str, ttl_s: float | None) -> AsyncSession:
        opened = await self._json("POST", "/v1/sessions", session_body(model, ttl_s))
        return AsyncSession(self, SessionInfo.from_json(opened))


class _OpeningSession:
    """What `AsyncClient.session` returns: awaited, the open `AsyncSession`; used with
    `async with`, the session, closed on exit."""

    def __init__(self, client: AsyncClient, model: str, ttl_s: float | None) -> None:
        self._client, self._model, self._ttl_s = client, model, ttl_s
        self._session: AsyncSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._client._open_session(self._model, self._ttl_s).__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._client._open_session(self._model, self._ttl_s)
        return self._session

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncSession:
    """`Session` for asyncio."""

    def __init__(self, client: AsyncClient, opened: SessionInfo) -> None:
        self.client = client
        self.id = opened.session_id
        self.model = opened.model
        self.expires_at = opened.expires_at
        self.closed = False
        self._path = api_path("v1", "sessions", self.id)

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r}, model={self.model!r}, closed={self.closed})"

    @overload
    async def generate(
        self, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    async def generate(
        self, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> AsyncStream: ...  # fmt: skip
    async def generate(
        self, prompt: str | None = None, input: Input | None = None, *, stream: bool = False,
        **sampling: Unpack[Sampling],
    ) -> GenerateResult | AsyncStream:  # fmt: skip
        """See `Session.generate`."""
        body = generation_body(sampling, stream, prompt=prompt, input=input)
        return await self.client._generation(self._path + "/generate", body)

    async def info(self) -> SessionInfo:
        return SessionInfo.from_json(await self.client._json("GET", self._path))

    async def close(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(NotFound):
            await self.client._json("DELETE", self._path)
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncStream:
    """`Stream` for asyncio: `async for event in stream`, `await stream.collect()`,
    `await stream.aclose()` or `async with stream:`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._state = StreamState()
        self._events = self._read()

    @property
    def result(self) -> GenerateResult | None:
        return self._state.result

    @property
    def done(self) -> Done | None:
        return self._state.done

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        return await anext(self._events)

    async def _read(self) -> AsyncGenerator[TokenEvent, None]:
        try:
            async for chunk in self.response.aiter_bytes():
                for event in self._state.feed(chunk):
                    yield event
                if self._state.result is not None:
                    return
        except httpx.TimeoutException as exc:
            raise transport_error(exc) from exc
        except httpx.TransportError as exc:
            raise self._state.incomplete(f"the connection broke ({exc})") from exc
        finally:
            await self.response.aclose()
        raise self._state.incomplete()

    async def collect(self) -> GenerateResult:
        """Read the rest of the stream; the whole result."""
        async for _ in self:
            pass
        return self._state.final_result()

    async def aclose(self) -> None:
        await self._events.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
