"""The Python client (clients/kvserve_client.py).

Against a real `kvserve serve`: every method, sync and async, streamed and not (streamed =
not streamed under greedy), sessions, errors carrying the server's own error object, a
429 retried until the server has room. Without a server (httpx.MockTransport): the SSE
parser at every chunk boundary, the retry policy, stream failures, the API key; and the
client imports neither `server` nor `model_core`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from clients.kvserve_client import (
    AsyncClient,
    AsyncStream,
    BadRequest,
    Client,
    Conflict,
    GenerateResult,
    IncompleteStream,
    KvserveError,
    NotFound,
    Overloaded,
    RequestTimeout,
    ServerSentEvent,
    SSEDecoder,
    Stream,
    TokenEvent,
    parse_retry_after,
    retry_delay,
)
from tests.live_server import ROOT, LiveServer, live_server

MODELS = ["text-lm", "text-lm-draft", "sine-regressor", "sine-forecaster", "digits-seq2seq"]
CONTEXT = [[0.5 * ((i % 8) / 8.0)] for i in range(40)]  # a sawtooth for sine-forecaster

# (method, arguments): one request per route and input form, greedy.
CALLS = {
    "text": (
        "generate",
        {"model": "text-lm", "prompt": "def main(", "max_new_tokens": 24, "stop": []},
    ),
    "values": ("generate", {"model": "sine-forecaster", "input": CONTEXT, "max_new_tokens": 12}),
    "seq2seq": (
        "seq2seq",
        {"model": "digits-seq2seq", "input": [3, 1, 4, 1, 5, 9, 2, 6], "max_new_tokens": 40},
    ),
    "speculative": (
        "speculative",
        {
            "model": "text-lm", "draft_model": "text-lm-draft", "draft_steps": 4,
            "prompt": "import os\nimport ", "max_new_tokens": 32, "stop": [],
        },
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(models=MODELS) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url) as sync_client:
        yield sync_client


def assert_same_result(streamed: GenerateResult, plain: GenerateResult) -> None:
    """A streamed result equals the non-streamed one (values to float32 rounding)."""
    if streamed.outputs and isinstance(streamed.outputs[0], list):
        flat = [x for vector in streamed.outputs for x in vector]
        assert flat == pytest.approx([x for vector in plain.outputs for x in vector], abs=1e-6)
    else:
        assert streamed.outputs == plain.outputs
    assert streamed.text == plain.text
    assert streamed.model == plain.model and streamed.id and streamed.id != plain.id
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.usage == plain.usage
    assert streamed.speculative == plain.speculative


def assert_events_match(events: list[TokenEvent], result: GenerateResult) -> None:
    assert [e.index for e in events] == list(range(len(result.outputs)))
    for event, output in zip(events, result.outputs, strict=True):
        assert (event.token, event.value) == (
            (output, None) if event.token is not None else (None, output)
        )
    if result.text is not None:
        assert "".join(e.text or "" for e in events) == result.text


# Live: every method, sync and async.


def test_models_and_health(client: Client) -> None:
    models = {m.id: m for m in client.models()}
    assert sorted(models) == sorted(MODELS)
    card = client.model("text-lm")
    assert card == models["text-lm"]
    assert (card.kind, card.input_form, card.vocab_size, card.tokenizer) == (
        "autoregressive", "tokens", 259, "bytes",
    )  # fmt: skip
    assert card.limits.max_seq_len == card.max_seq_len and card.parameters > 0
    assert (
        models["sine-regressor"].kind == "regression" and models["sine-regressor"].output_dim == 3
    )
    health = client.health()
    assert health.ready and health.status == "ready"
    with pytest.raises(NotFound) as caught:
        client.model("no-such-model")
    assert caught.value.param == "model_id" and "no-such-model" in caught.value.message


def test_predict(client: Client, server: LiveServer) -> None:
    inputs = [[[0.1 * i] for i in range(n)] for n in (16, 40)]
    result = client.predict("sine-regressor", inputs)
    assert result.model == "sine-regressor" and result.usage.prompt_tokens == 56
    assert len(result.outputs) == 2 and all(len(o) == 3 for o in result.outputs)

    async def main() -> Any:
        async with AsyncClient(server.url) as async_client:
            return await async_client.predict("sine-regressor", inputs)

    async_outputs = asyncio.run(main()).outputs
    for async_output, output in zip(async_outputs, result.outputs, strict=True):
        assert async_output == pytest.approx(output, abs=1e-6)


@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
def test_streamed_equals_not_streamed(client: Client, call: str) -> None:
    method, kwargs = CALLS[call]
    plain = getattr(client, method)(**kwargs)
    assert isinstance(plain, GenerateResult)
    with getattr(client, method)(**kwargs, stream=True) as stream:
        assert isinstance(stream, Stream)
        events = list(stream)
    assert stream.result is not None and stream.done is not None
    assert_same_result(stream.result, plain)
    assert_events_match(events, stream.result)
    if call == "speculative":  # speculative decoding = the target alone, under greedy
        target = client.generate("text-lm", prompt=kwargs["prompt"], max_new_tokens=32, stop=[])
        assert plain.outputs == target.outputs and plain.speculative is not None
        assert plain.speculative.proposed >= plain.speculative.accepted > 0
    if call == "text":
        assert isinstance(plain.text, str) and plain.usage.completion_tokens == 24


@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
def test_async_streamed_equals_not_streamed(client: Client, server: LiveServer, call: str) -> None:
    method, kwargs = CALLS[call]

    async def main() -> tuple[GenerateResult, list[TokenEvent], AsyncStream]:
        async with AsyncClient(server.url) as async_client:
            plain = await getattr(async_client, method)(**kwargs)
            async with await getattr(async_client, method)(**kwargs, stream=True) as stream:
                events = [event async for event in stream]
            return plain, events, stream

    plain, events, stream = asyncio.run(main())
    assert stream.result is not None
    assert_same_result(stream.result, plain)
    assert_events_match(events, stream.result)
    sync_plain = getattr(client, method)(**kwargs)
    assert_same_result(plain, sync_plain)  # async = sync


def test_closing_a_stream_early_ends_it(client: Client) -> None:
    body = {"prompt": "x", "max_new_tokens": 400, "stop": []}
    with client.generate("text-lm", **body, stream=True) as stream:
        first = next(stream)
    assert first.index == 0 and stream.result is None
    with pytest.raises(IncompleteStream):
        stream.collect()
    assert client.generate("text-lm", prompt="x", max_new_tokens=2).usage.completion_tokens == 2


def test_session_two_turns_reuse_the_cache_and_close(client: Client) -> None:
    turns = ["class Stack:\n", "    def push(self"]
    with client.session("text-lm", ttl_s=600) as session:
        first = session.generate(prompt=turns[0], max_new_tokens=8, stop=[])
        with session.generate(prompt=turns[1], max_new_tokens=8, stop=[], stream=True) as stream:
            events = list(stream)
        second = stream.collect()
        assert first.session_id == second.session_id == session.id
        assert first.usage.cached_tokens == 0 and second.usage.cached_tokens > 0
        assert_events_match(events, second)
        info = session.info()
        history = list(turns[0].encode()) + first.outputs + list(turns[1].encode())
        assert info.model == "text-lm" and info.length == len(history) + 8
        # The session's continuation = one stateless call on the whole history.
        stateless = client.generate("text-lm", input=history, max_new_tokens=8, stop=[])
        assert second.outputs == stateless.outputs
    assert session.closed
    with pytest.raises(NotFound) as caught:
        session.info()
    assert caught.value.status == 404 and caught.value.param == "session_id"
    session.close()  # closing again is harmless


def test_async_session_two_turns_reuse_the_cache_and_close(server: LiveServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as async_client:
            async with async_client.session("text-lm") as session:
                first = await session.generate(prompt="import ", max_new_tokens=6, stop=[])
                stream = await session.generate(input=[10], max_new_tokens=6, stream=True)
                second = await stream.collect()
                assert second.session_id == first.session_id == session.id
                assert first.usage.cached_tokens == 0 and second.usage.cached_tokens > 0
                assert (await session.info()).length == 7 + 6 + 1 + 6
            with pytest.raises(NotFound):
                await session.info()
            opened = await async_client.session("text-lm")  # awaited, without `async with`
            await opened.close()
            with pytest.raises(NotFound):
                await opened.info()

    asyncio.run(main())


# (client call, the same request as raw JSON, the expected exception, status and param).
ERROR_CASES = [
    (lambda c: c.generate("text-lm", input=[999]), {"model": "text-lm", "input": [999]},
     BadRequest, 422, "input.0"),
    (lambda c: c.generate("no-such-model", prompt="x"), {"model": "no-such-model", "prompt": "x"},
     NotFound, 404, "model"),
    (lambda c: c.generate("sine-regressor", input=[[0.1]], stream=True),
     {"model": "sine-regressor", "input": [[0.1]]}, Conflict, 409, "model"),
]  # fmt: skip


@pytest.mark.parametrize("case", ERROR_CASES, ids=["422", "404", "409"])
def test_errors_carry_the_servers_error_object(
    client: Client, server: LiveServer, case: tuple[Any, ...]
) -> None:
    call, body, kind, status, param = case
    expected = httpx.post(f"{server.url}/v1/generate", json=body, timeout=60).json()["error"]
    with pytest.raises(kind) as caught:
        call(client)
    error = caught.value
    assert (error.status, error.param) == (status, param)
    assert (error.type, error.message, error.param) == (
        expected["type"], expected["message"], expected["param"],
    )  # fmt: skip
    assert error.body == {"error": expected} and error.message in str(error)

    async def main() -> None:
        async with AsyncClient(server.url) as async_client:
            with pytest.raises(kind) as async_caught:
                await call(async_client)
            assert async_caught.value.message == expected["message"]

    asyncio.run(main())


class CountingTransport(httpx.HTTPTransport):
    """A real transport that notes the status of every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


def test_a_429_is_retried_until_the_server_has_room() -> None:
    args = ["--max-running", "1", "--max-waiting", "0"]
    with live_server(models=["text-lm"], args=args) as busy:
        running = threading.Event()
        occupied: dict[str, Any] = {}

        def occupy() -> None:
            with (
                Client(busy.url) as other,
                other.generate(
                    "text-lm", prompt="a", max_new_tokens=500, stop=[], stream=True
                ) as s,
            ):
                for _ in s:
                    running.set()
                occupied["result"] = s.result

        thread = threading.Thread(target=occupy)
        thread.start()
        assert running.wait(60), "the long stream did not start"
        transport = CountingTransport()
        with Client(busy.url, max_retries=20, backoff_s=0.05, transport=transport) as client:
            result = client.generate("text-lm", prompt="b", max_new_tokens=4, stop=[])
        thread.join(60)
    assert result.usage.completion_tokens == 4
    assert occupied["result"].usage.completion_tokens == 500
    assert len(transport.statuses) > 1
    assert transport.statuses[0] == 429 and transport.statuses[-1] == 200


# Without a server: the retry policy, stream failures, the API key.


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> Client:
    return Client("http://kvserve.test", transport=httpx.MockTransport(handler), **kw)


def sse_body(*events: tuple[str, dict[str, Any]]) -> bytes:
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


TOKENS = [
    ("token", {"index": 0, "token": 104, "text": "h"}),
    ("token", {"index": 1, "token": 105, "text": "i"}),
]
USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 0}
DONE = ("done", {"id": "r1", "model": "m", "finish_reason": "length", "usage": USAGE})


def test_stream_result_is_assembled_from_the_events() -> None:
    body = sse_body(*TOKENS, DONE)
    with mock_client(lambda r: httpx.Response(200, content=body)) as client:
        result = client.generate("m", prompt="x", stream=True).collect()
    assert (
        result == GenerateResult("r1", "m", [104, 105], "hi", "length", result.usage, None, None)
        and result.usage.completion_tokens == 2
    )


def test_an_error_event_raises_from_the_iteration() -> None:
    error = {"error": {"type": "invalid_request", "message": "bad token", "param": None}}
    body = sse_body(TOKENS[0], ("error", error))
    with mock_client(lambda r: httpx.Response(200, content=body)) as client:
        stream = client.generate("m", prompt="x", stream=True)
        assert next(stream).token == 104
        with pytest.raises(BadRequest) as caught:
            next(stream)
    assert (caught.value.status, caught.value.message, caught.value.body) == (
        422,
        "bad token",
        error,
    )


def test_a_stream_without_done_raises_and_is_never_retried() -> None:
    attempts = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        return httpx.Response(200, content=sse_body(*TOKENS))

    with mock_client(handler, max_retries=5, backoff_s=0) as client:
        stream = client.generate("m", prompt="x", stream=True)
        assert [e.index for e in [next(stream), next(stream)]] == [0, 1]
        with pytest.raises(IncompleteStream):
            next(stream)
    assert len(attempts) == 1 and stream.result is None

    async def main() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://kvserve.test", transport=transport) as async_client:
            async_stream = await async_client.generate("m", prompt="x", stream=True)
            with pytest.raises(IncompleteStream):
                await async_stream.collect()

    asyncio.run(main())


def test_a_refused_stream_is_retried_before_it_starts() -> None:
    statuses = iter([503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(statuses)
        if status == 503:
            error = {"error": {"type": "unavailable", "message": "restarting", "param": None}}
            return httpx.Response(503, json=error, headers={"Retry-After": "0"})
        return httpx.Response(200, content=sse_body(*TOKENS, DONE))

    with mock_client(handler, backoff_s=0) as client:
        assert client.generate("m", prompt="x", stream=True).collect().text == "hi"


def test_retries_wait_for_retry_after_then_give_up_with_the_error() -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        error = {"error": {"type": "overloaded", "message": "full", "param": None}}
        return httpx.Response(429, json=error, headers={"Retry-After": "0.2"})

    with (
        mock_client(handler, max_retries=2, backoff_s=0.01) as client,
        pytest.raises(Overloaded) as caught,
    ):
        client.models()
    assert len(times) == 3 and caught.value.retry_after_s == 0.2 and caught.value.message == "full"
    assert all(later - earlier >= 0.2 for earlier, later in itertools.pairwise(times))


def test_only_refusals_and_unsent_requests_are_retried() -> None:
    outcomes: list[Any] = [httpx.ConnectError("refused"), httpx.Response(200, json={"data": []})]

    def handler(request: httpx.Request) -> httpx.Response:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with mock_client(handler, backoff_s=0) as client:
        assert client.models() == []  # the refused connection was tried again
    outcomes[:] = [httpx.ReadTimeout("slow"), httpx.Response(200, json={"data": []})]
    with mock_client(handler, backoff_s=0) as client, pytest.raises(RequestTimeout):
        client.models()  # the request may be running: not sent twice
    outcomes[:] = [httpx.Response(500, text="oops"), httpx.Response(200, json={"data": []})]
    with mock_client(handler, backoff_s=0) as client, pytest.raises(KvserveError) as caught:
        client.models()
    assert caught.value.status == 500 and "oops" in caught.value.message and len(outcomes) == 1


def test_retry_delay_backs_off_and_honours_retry_after() -> None:
    assert 0.1 <= retry_delay(0, 0.1, None) <= 0.11 and 0.4 <= retry_delay(2, 0.1, None) <= 0.44
    assert retry_delay(0, 0.1, 3.0) == 3.0 and retry_delay(20, 1.0, None) <= 33.0
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None and parse_retry_after("inf") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30


def test_the_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"object": "list", "data": []})

    monkeypatch.setenv("KVSERVE_API_KEY", "from-env")
    with mock_client(handler) as client:
        client.models()
    with mock_client(handler, api_key="from-argument") as client:
        client.models()

    async def main() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://kvserve.test", transport=transport) as async_client:
            await async_client.models()

    asyncio.run(main())
    monkeypatch.delenv("KVSERVE_API_KEY")
    with mock_client(handler) as client:
        client.models()
    assert seen == ["Bearer from-env", "Bearer from-argument", "Bearer from-env", None]


def test_unknown_options_are_refused_before_sending() -> None:
    with (
        mock_client(lambda r: pytest.fail("sent")) as client,
        pytest.raises(TypeError, match="top_n"),
    ):
        client.generate("m", prompt="x", top_n=3)  # type: ignore[call-overload]


# The SSE parser.

SSE_SAMPLE = (
    "\ufeff: a comment, then a keep-alive comment\r\n"
    ":\r\n"
    "event: token\r\n"
    'data: {"index": 0, "text": "é€𝄞"}\r\n'
    "id: 7\r\n"
    "\r\n"
    "data: first line\n"
    "data:second line, no space\n"
    "data\n"  # a field name alone: an empty value
    "retry: 1500\n"
    "unknown: ignored\n"
    "\n"
    "event: ping\r\r"  # no data: no event; CR line ends
    "event: done\r"
    "data:  two spaces keep one\r"
    "\r"
    "data: unfinished at the end is dropped\n"
).encode()
SSE_EXPECTED = [
    ServerSentEvent("token", '{"index": 0, "text": "é€𝄞"}', "7", None),
    ServerSentEvent("message", "first line\nsecond line, no space\n", "7", 1500),
    ServerSentEvent("done", " two spaces keep one", "7", 1500),
]


def decode(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_sse_parser_reads_every_field_form() -> None:
    assert decode([SSE_SAMPLE]) == SSE_EXPECTED
    assert SSEDecoder().feed(SSE_SAMPLE.decode("utf-8")) == SSE_EXPECTED  # text works too


def test_sse_parser_at_every_chunk_boundary() -> None:
    for cut in range(len(SSE_SAMPLE) + 1):
        assert decode([SSE_SAMPLE[:cut], SSE_SAMPLE[cut:]]) == SSE_EXPECTED, cut
    assert decode([SSE_SAMPLE[i : i + 1] for i in range(len(SSE_SAMPLE))]) == SSE_EXPECTED
    for size in (2, 3, 5, 7):
        chunks = [SSE_SAMPLE[i : i + size] for i in range(0, len(SSE_SAMPLE), size)]
        assert decode(chunks) == SSE_EXPECTED, size


def test_sse_parser_crlf_split_between_cr_and_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("message", "a")]  # the LF ends no line
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [ServerSentEvent("message", "b")]


# The client stands alone.


def test_the_client_imports_neither_server_nor_model_core() -> None:
    check = (
        "import clients.kvserve_client, sys; "
        "loaded = [m for m in sys.modules if m.startswith(('server', 'model_core', 'torch'))]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)


def test_the_readme_client_example_runs(server: LiveServer) -> None:
    """README's client example, pointed at the live server, runs as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python title=client\n(.*?)```", readme, flags=re.S)
    assert block is not None
    code = block.group(1).replace("http://127.0.0.1:8000", server.url)
    exec(compile(code, "README client example", "exec"), {"__name__": "__main__"})
