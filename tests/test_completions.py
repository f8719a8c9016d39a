"""POST /v1/completions against the demo text model: the same text as /v1/generate,
streamed as non-streamed, OpenAI's shapes and errors, and the official `openai` client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.routes.completions import StopText
from server.settings import ServerSettings

MODELS = ["text-lm", "sine-regressor"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(models=MODELS))) as test_client:
        yield test_client


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": "text-lm", **body})
    assert response.status_code == 200, response.text
    return response.json()


def stream(client: TestClient, **body: Any) -> tuple[list[dict[str, Any]], str]:
    """The chunks of a streamed completion (the [DONE] line checked and dropped), and the
    raw body."""
    response = client.post("/v1/completions", json={"model": "text-lm", "stream": True, **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    assert raw.endswith("data: [DONE]\n\n")
    messages = [m for m in raw.split("\n\n") if m]
    assert all(m.startswith("data: ") for m in messages)
    return [json.loads(m[6:]) for m in messages[:-1]], raw


def streamed_texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts


def finish_reasons(chunks: list[dict[str, Any]]) -> dict[int, str]:
    """Each choice's finish_reason, checking it comes once, in the choice's last chunk."""
    reasons: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            assert choice["index"] not in reasons, "a chunk after the finishing one"
            if choice["finish_reason"] is not None:
                reasons[choice["index"]] = choice["finish_reason"]
    return reasons


def test_greedy_completion_is_generate_text(client: TestClient) -> None:
    generated = client.post(
        "/v1/generate", json={"model": "text-lm", "prompt": "def ", "max_new_tokens": 24}
    ).json()
    body = complete(client, prompt="def ", max_tokens=24, temperature=0)
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "text-lm"
    [choice] = body["choices"]
    assert choice == {
        "text": generated["text"],
        "index": 0,
        "logprobs": None,
        "finish_reason": generated["finish_reason"],
    }
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": len(generated["outputs"]),
        "total_tokens": 4 + len(generated["outputs"]),
    }


def test_token_id_prompts_and_echo(client: TestClient) -> None:
    text = complete(client, prompt="class ", max_tokens=10, temperature=0)["choices"][0]["text"]
    ids = list(b"class ")
    assert complete(client, prompt=ids, max_tokens=10, temperature=0)["choices"][0]["text"] == text
    many = complete(client, prompt=[ids, ids], max_tokens=10, temperature=0)
    assert [c["text"] for c in many["choices"]] == [text, text]
    echoed = complete(client, prompt="class ", max_tokens=10, temperature=0, echo=True)
    assert echoed["choices"][0]["text"] == "class " + text
    assert echoed["usage"]["completion_tokens"] == 10


def test_streamed_text_is_the_non_streamed_text(client: TestClient) -> None:
    body = {"prompt": ["def ", "import "], "max_tokens": 40, "temperature": 0}
    whole = complete(client, **body)
    chunks, _ = stream(client, **body)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "text_completion" and c["model"] == "text-lm" for c in chunks)
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    assert "usage" not in chunks[-1]
    assert streamed_texts(chunks) == {c["index"]: c["text"] for c in whole["choices"]}
    assert finish_reasons(chunks) == {c["index"]: c["finish_reason"] for c in whole["choices"]}

    echoed, _ = stream(client, prompt="def ", max_tokens=8, temperature=0, echo=True)
    assert echoed[0]["choices"][0]["text"] == "def "
    assert streamed_texts(echoed)[0] == "def " + whole["choices"][0]["text"][:8]


def test_high_temperature_stream_joins_to_the_whole_text(client: TestClient) -> None:
    body = {"prompt": "# héllo wörld ✓ ", "max_tokens": 64, "temperature": 2.0, "seed": 3}
    chunks, _ = stream(client, **body)
    assert len(chunks) > 1
    assert streamed_texts(chunks)[0] == complete(client, **body)["choices"][0]["text"]


def releases(text: StopText, data: bytes, final: bool = True) -> list[str]:
    """What a stream would send after each byte of `data`, then at the end."""
    pieces = []
    for byte in data:
        text.feed(byte)
        pieces.append(text.release(final=False))
    text.finish()
    if final:
        pieces.append(text.release(final=True))
    return pieces


def test_stop_text_never_splits_a_character() -> None:
    assert releases(StopText([]), "é✓".encode()) == ["", "é", "", "", "✓", ""]
    # An unfinished character at the end becomes U+FFFD, as ByteTokenizer.decode does.
    assert "".join(releases(StopText([]), "a✓".encode()[:3])) == "a\ufffd"


def test_stop_text_holds_back_what_may_begin_a_stop_string() -> None:
    text = StopText(["STOP", "xyz"])
    pieces = releases(text, b"ab ST STx STOP tail")
    assert "".join(pieces) == "ab ST STx "
    assert text.stopped and text.text == "ab ST STx "
    assert pieces[:5] == ["a", "b", " ", "", ""]  # "S", "ST" held: they may begin "STOP"
    assert not any("STOP" in p or p.endswith("S") for p in pieces)
    # The earliest stop string wins; it may span tokens and be found in a multi-byte text.
    text = StopText(["✓!", "b"])
    assert "".join(releases(text, "a✓!b".encode())) == "a"
    assert text.stopped


def test_n_with_a_seed_differs_per_choice_and_repeats(client: TestClient) -> None:
    body = {"prompt": "def ", "max_tokens": 24, "temperature": 1.0, "n": 2, "seed": 7}
    first = complete(client, **body)
    again = complete(client, **body)
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1]
    assert texts[0] != texts[1]
    assert [c["text"] for c in again["choices"]] == texts
    # The first sample is what the seed alone gives (as n=1 or /v1/generate would).
    assert complete(client, **{**body, "n": 1})["choices"][0]["text"] == texts[0]
    # Streamed, the same samples (in whatever order the chunks arrive).
    chunks, _ = stream(client, **body)
    assert streamed_texts(chunks) == {0: texts[0], 1: texts[1]}
    assert first["usage"]["prompt_tokens"] == 4  # each prompt counted once, as OpenAI


def test_list_of_prompts_gives_choices_in_order(client: TestClient) -> None:
    prompts = ["def ", "import ", "class "]
    alone = [complete(client, prompt=p, max_tokens=12, temperature=0) for p in prompts]
    body = complete(client, prompt=prompts, max_tokens=12, temperature=0, n=2)
    assert [c["index"] for c in body["choices"]] == list(range(6))
    expected = [a["choices"][0]["text"] for a in alone for _ in range(2)]
    assert [c["text"] for c in body["choices"]] == expected
    assert body["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)
    completion = sum(a["usage"]["completion_tokens"] for a in alone) * 2
    assert body["usage"]["completion_tokens"] == completion
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + completion


def test_stop_string_cuts_the_text_and_never_streams(client: TestClient) -> None:
    full = complete(client, prompt="def ", max_tokens=48, temperature=0)["choices"][0]["text"]
    # The first 3 characters whose first occurrence is well into the text.
    stop = next(full[i : i + 3] for i in range(8, len(full) - 3) if full.find(full[i : i + 3]) >= 8)
    expected = full[: full.index(stop)]
    assert len(expected) >= 8
    body = complete(client, prompt="def ", max_tokens=48, temperature=0, stop=stop)
    [choice] = body["choices"]
    assert choice["text"] == expected
    assert choice["finish_reason"] == "stop"
    # Generation stopped where the stop string was complete, not at max_tokens.
    assert body["usage"]["completion_tokens"] < 48

    chunks, raw = stream(client, prompt="def ", max_tokens=48, temperature=0, stop=[stop, "@@"])
    deltas = [c["choices"][0]["text"] for c in chunks]
    assert "".join(deltas) == expected
    assert stop not in raw
    assert finish_reasons(chunks) == {0: "stop"}
    # A stop string never found changes nothing.
    assert (
        complete(client, prompt="def ", max_tokens=48, temperature=0, stop="@@@")["choices"][0][
            "text"
        ]
        == full
    )


def test_usage_in_the_last_chunk_with_include_usage(client: TestClient) -> None:
    body = {"prompt": ["def ", "import "], "max_tokens": 6, "temperature": 0}
    whole = complete(client, **body)
    chunks, _ = stream(client, **body, stream_options={"include_usage": True})
    *text_chunks, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in text_chunks)
    assert whole["usage"] == {"prompt_tokens": 11, "completion_tokens": 12, "total_tokens": 23}


def test_defaults_and_nulls_are_openai_s(client: TestClient) -> None:
    body = complete(
        client,
        prompt="def ",
        max_tokens=None,
        temperature=0,
        n=None,
        top_p=None,
        logprobs=None,
        presence_penalty=0,
        frequency_penalty=0.0,
        best_of=1,
        logit_bias={},
        user="someone",
        stop=None,
        echo=None,
        suffix=None,
    )
    assert body["usage"]["completion_tokens"] == 16  # max_tokens' default


def error(client: TestClient, status: int, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": "text-lm", "prompt": "x", **body})
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": 1}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"best_of": 3, "n": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logit_bias": {"10": 5}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 600}, "max_tokens"),  # over text-lm's max_seq_len (512)
        ({"max_tokens": 2000}, "max_tokens"),  # over the server's max_new_tokens
        ({"n": 65}, "n"),  # over max_batch_size
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok", ""]}, "prompt.1"),
        ({"prompt": [1, 2, 400]}, "prompt.2"),
        ({"temperatur": 0}, "temperatur"),
    ],
)
def test_bad_requests_get_422_naming_the_field(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    err = error(client, 422, **body)
    assert err["param"] == param
    assert err["type"] == "invalid_request"


def test_unsupported_options_say_so(client: TestClient) -> None:
    assert "not supported" in error(client, 422, presence_penalty=1)["message"]
    assert "not supported" in error(client, 422, logprobs=0)["message"]


def test_prompt_too_long_for_max_tokens(client: TestClient) -> None:
    err = error(client, 422, prompt="x" * 500, max_tokens=16)
    assert err["param"] == "max_tokens" and "max_seq_len" in err["message"]


def test_a_lone_surrogate_in_the_prompt_is_a_422(client: TestClient) -> None:
    body = '{"model": "text-lm", "prompt": "a\\ud800"}'
    response = client.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "prompt"


def test_wrong_models(client: TestClient) -> None:
    assert error(client, 404, model="no-such-model")["type"] == "model_not_found"
    assert error(client, 409, model="sine-regressor")["type"] == "wrong_model_kind"


def test_metrics_count_every_choice(client: TestClient) -> None:
    def successes() -> float:
        text = client.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kvserve:request_success_total{") and 'model="text-lm"' in line
        )

    before = successes()
    complete(client, prompt=["a", "b"], max_tokens=3, temperature=0, n=2)
    stream(client, prompt="c", max_tokens=3, temperature=0, n=3)
    assert successes() - before == 7
    assert 'kvserve:num_requests_running{model="text-lm"} 0.0' in client.get("/metrics").text


# The official client, over real HTTP.
@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    import uvicorn

    config = uvicorn.Config(
        create_app(ServerSettings(models=["text-lm"])), host="127.0.0.1", port=0, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_openai_client_gets_the_same_text(client: TestClient, base_url: str) -> None:
    openai = pytest.importorskip("openai")
    expected = complete(client, prompt="def ", max_tokens=8, temperature=0)["choices"][0]
    api = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

    result = api.completions.create(model="text-lm", prompt="def ", max_tokens=8, temperature=0)
    assert result.object == "text_completion"
    assert result.choices[0].text == expected["text"]
    assert result.choices[0].finish_reason == expected["finish_reason"]
    assert result.usage is not None and result.usage.completion_tokens == 8

    chunks = list(
        api.completions.create(
            model="text-lm", prompt="def ", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == expected["text"]
    assert chunks[-1].choices[0].finish_reason == expected["finish_reason"]

    samples = api.completions.create(
        model="text-lm", prompt=["def ", "class "], max_tokens=8, n=2, seed=1, stop=["\n"]
    )
    assert [c.index for c in samples.choices] == [0, 1, 2, 3]

    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="nope", prompt="def ", max_tokens=8)
    with pytest.raises(openai.UnprocessableEntityError):
        api.completions.create(model="text-lm", prompt="def ", max_tokens=8, logprobs=2)


def test_a_client_that_goes_away_cancels_its_requests(base_url: str) -> None:
    import httpx

    def failures(metrics: str) -> float:
        prefix = 'kvserve:request_failure_total{error_type="gone",model="text-lm"} '
        lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
        return float(lines[0][len(prefix) :]) if lines else 0.0

    root = base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=30) as http:
        before = failures(http.get("/metrics").text)
        body = {"model": "text-lm", "prompt": "def ", "max_tokens": 480, "n": 2, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # generation has started; now hang up
        deadline = time.monotonic() + 20
        while failures(metrics := http.get("/metrics").text) - before < 2:
            assert time.monotonic() < deadline, "the engine requests were not cancelled"
            time.sleep(0.05)
        assert 'kvserve:num_requests_running{model="text-lm"} 0.0' in metrics
