"""The synchronous client: `Client`, its streams (`Stream`) and its sessions (`Session`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
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


class Client(ClientSettings):
    """kvserve over HTTP, synchronously (thread-safe: share one per process).

        with Client("http://127.0.0.1:8000", api_key="...") as client:
            print([m.id for m in client.models()])
            print(client.generate("text-lm", prompt="def ", max_new_tokens=8).text)

    `timeout` is seconds (or an `httpx.Timeout`; None for none), `max_retries` and
    `backoff_s` the retries of 429 / 503 answers and of connections that fail,
    `transport` an httpx transport (tests pass `httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, backoff_s)
        self.http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(
        self, method: str, path: str, body: Any = None, *, stream: bool = False, retry: bool = True
    ) -> httpx.Response:
        """A successful response (open, when `stream`), after the retries; raises the
        server's error otherwise."""
        attempt = 0
        while True:
            request = self.http.build_request(method, path, json=body)
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                wait = self._retry_wait(attempt, retry, exc)
                if wait is None:
                    raise transport_error(exc) from exc
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                error = response_error(response)
                wait = self._retry_wait(attempt, retry, error)
                if wait is None:
                    raise error
            time.sleep(wait)
            attempt += 1

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        return self._send(method, path, body).json()

    def _generation(self, path: str, body: dict[str, Any]) -> GenerateResult | Stream:
        if body["stream"]:
            return Stream(self._send("POST", path, body, stream=True))
        return GenerateResult.from_json(self._json("POST", path, body))

    def health(self) -> Health:
        """Readiness (GET /health/ready), asked once: `ready` is False while the server
        starts, restarts a worker or drains; raises `ConnectionFailed` if nothing answers."""
        try:
            self._send("GET", "/health/ready", retry=False)
        except Unavailable as error:
            return Health(False, error.type, error.message)
        return Health(True, "ready")

    def models(self) -> list[ModelInfo]:
        """Every loaded model's card."""
        return models_from_json(self._json("GET", "/v1/models"))

    def model(self, model_id: str) -> ModelInfo:
        """One model's card; `NotFound` if it is not served."""
        return ModelInfo.from_json(self._json("GET", api_path("v1", "models", model_id)))

    def predict(self, model: str, inputs: list[list[list[float]]]) -> PredictResult:
        """Regression over a batch of value sequences (lengths may differ).

        client.predict("sine-regressor", [[[0.0], [0.7], [1.0]], [[0.5], [0.2]]]).outputs
        """
        return PredictResult.from_json(
            self._json("POST", "/v1/predict", {"model": model, "inputs": inputs})
        )

    @overload
    def generate(
        self, model: str, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    def generate(
        self, model: str, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> Stream: ...  # fmt: skip
    def generate(
        self, model: str, prompt: str | None = None, input: Input | None = None, *,
        stream: bool = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult | Stream:  # fmt: skip
        """Continue `prompt` (text, byte-level models) or `input` (token ids or value
        vectors) on an autoregressive model; a `Stream` of token events with `stream=True`.

        client.generate("text-lm", prompt="def ", max_new_tokens=16, stop=[]).text
        client.generate("sine-forecaster", input=[[0.0], [0.3], [0.6]]).outputs
        """
        body = generation_body(sampling, stream, model=model, prompt=prompt, input=input)
        return self._generation("/v1/generate", body)

    @overload
    def seq2seq(
        self, model: str, input: list[int], *, start: list[int] | None = None,
        stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    def seq2seq(
        self, model: str, input: list[int], *, start: list[int] | None = None,
        stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> Stream: ...  # fmt: skip
    def seq2seq(
        self, model: str, input: list[int], *, start: list[int] | None = None,
        stream: bool = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult | Stream:  # fmt: skip
        """Decode a target from the source `input` on an encoder-decoder model (`start`:
        the decoder's first tokens, default the model's BOS).

        client.seq2seq("digits-seq2seq", [3, 1, 4], max_new_tokens=40).outputs
        """
        body = generation_body(sampling, stream, model=model, input=input, start=start)
        return self._generation("/v1/seq2seq", body)

    @overload
    def speculative(
        self, model: str, draft_model: str, prompt: str | None = None, input: Input | None = None,
        *, draft_steps: int = 4, stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    def speculative(
        self, model: str, draft_model: str, prompt: str | None = None, input: Input | None = None,
        *, draft_steps: int = 4, stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> Stream: ...  # fmt: skip
    def speculative(
        self, model: str, draft_model: str, prompt: str | None = None, input: Input | None = None,
        *, draft_steps: int = 4, stream: bool = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult | Stream:  # fmt: skip
        """`generate` with `draft_model` proposing `draft_steps` tokens a round and `model`
        verifying them; the result's `speculative` holds the acceptance statistics.

        client.speculative("text-lm", "text-lm-draft", prompt="import ").speculative.alpha
        """
        body = generation_body(
            sampling, stream, model=model, draft_model=draft_model, draft_steps=draft_steps,
            prompt=prompt, input=input,
        )  # fmt: skip
        return self._generation("/v1/speculative", body)

    def session(self, model: str, ttl_s: float | None = None) -> Session:
        """Open a session on an autoregressive model (`ttl_s`: idle time to live).

        with client.session("text-lm") as session:
            session.generate(prompt="class Stack:\\n")
        """
        opened = self._json("POST", "/v1/sessions", session_body(model, ttl_s))
        return Session(self, SessionInfo.from_json(opened))


class Session:
    """A conversation kept by the server: each `generate` appends its input to the
    history and continues from the cached keys and values (`usage.cached_tokens`).
    `close()` (or leaving the `with` block) deletes it."""

    def __init__(self, client: Client, opened: SessionInfo) -> None:
        self.client = client
        self.id = opened.session_id
        self.model = opened.model
        self.expires_at = opened.expires_at
        self.closed = False
        self._path = api_path("v1", "sessions", self.id)

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, model={self.model!r}, closed={self.closed})"

    @overload
    def generate(
        self, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[False] = False, **sampling: Unpack[Sampling],
    ) -> GenerateResult: ...  # fmt: skip
    @overload
    def generate(
        self, prompt: str | None = None, input: Input | None = None, *,
        stream: Literal[True], **sampling: Unpack[Sampling],
    ) -> Stream: ...  # fmt: skip
    def generate(
        self, prompt: str | None = None, input: Input | None = None, *, stream: bool = False,
        **sampling: Unpack[Sampling],
    ) -> GenerateResult | Stream:  # fmt: skip
        """Append `prompt` or `input` to the session and continue it."""
        body = generation_body(sampling, stream, prompt=prompt, input=input)
        return self.client._generation(self._path + "/generate", body)

    def info(self) -> SessionInfo:
        """Its length, model, expiry and cache state; `NotFound` once closed or expired."""
        return SessionInfo.from_json(self.client._json("GET", self._path))

    def close(self) -> None:
        """Delete it (a session that already expired counts as closed)."""
        if self.closed:
            return
        with contextlib.suppress(NotFound):  # expired already: closed either way
            self.client._json("DELETE", self._path)
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Stream:
    """The token events of a streamed request, as they arrive.

        with client.generate("text-lm", prompt="def ", stream=True) as stream:
            for event in stream:
                print(event.text, end="")
        print(stream.result.usage)

    After the last event `result` holds the whole `GenerateResult` and `done` the done
    event (`collect()` reads to the end and returns the result). An `event: error` raises
    its `KvserveError` from the iteration; a stream that ends without `done` raises
    `IncompleteStream`. `close()`, or leaving the `with` block, closes the connection,
    which cancels the request on the server.
    """

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

    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        return next(self._events)

    def _read(self) -> Generator[TokenEvent, None, None]:
        try:
            for chunk in self.response.iter_bytes():
                yield from self._state.feed(chunk)
                if self._state.result is not None:
                    return
        except httpx.TimeoutException as exc:
            raise transport_error(exc) from exc
        except httpx.TransportError as exc:
            raise self._state.incomplete(f"the connection broke ({exc})") from exc
        finally:
            self.response.close()
        raise self._state.incomplete()

    def collect(self) -> GenerateResult:
        """Read the rest of the stream; the whole result."""
        for _ in self:
            pass
        return self._state.final_result()

    def close(self) -> None:
        self._events.close()
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
