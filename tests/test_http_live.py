"""Against a real `kvserve serve` process: every endpoint for every bundled model answers
with its documented shape; streamed = not streamed; a session over three calls = one call
on the whole history; /metrics counts what was just served; SIGTERM drains."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_core.recipes import bundled_dir
from tests.live_server import LiveServer, live_server

TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server() as running:  # no flags: the bundled demos
        yield running


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def streamed(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """(outputs, done data) of a streamed request."""
    response = http.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kind, done = events[-1]
    assert kind == "done", events[-1]
    tokens = [data for kind, data in events[:-1] if kind == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    key = "token" if "token" in (tokens[0] if tokens else {"token": 0}) else "value"
    return [t[key] for t in tokens], done


def plain(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_every_bundled_model_with_its_card(http: httpx.Client) -> None:
    bundled = sorted(p.name for p in bundled_dir().iterdir() if (p / "config.json").exists())
    listed = http.get("/v1/models").json()
    assert listed["object"] == "list"
    assert sorted(m["id"] for m in listed["data"]) == bundled
    for card in listed["data"]:
        assert http.get(f"/v1/models/{card['id']}").json() == card
        assert card["parameters"] > 0 and card["devices"] == ["cpu"]
        limits = {"max_seq_len", "max_new_tokens", "max_batch_size", "max_body_bytes"}
        assert set(card["limits"]) == limits
        assert card["input_form"] == ("tokens" if card["vocab_size"] else "values")


def test_health_and_openapi(http: httpx.Client) -> None:
    assert http.get("/health/live").json() == {"status": "ok"}
    assert http.get("/health/ready").json() == {"status": "ready"}
    schema = http.get("/openapi.json").json()
    paths = [
        "/v1/predict", "/v1/generate", "/v1/seq2seq", "/v1/speculative", "/v1/sessions",
        "/v1/sessions/{session_id}/generate", "/v1/completions", "/v1/models",
    ]  # fmt: skip
    for path in paths:
        assert path in schema["paths"], path
    assert http.get("/docs").status_code == 200


def test_predict_on_the_regressor(http: httpx.Client) -> None:
    sequences = [[[0.1 * i] for i in range(n)] for n in (16, 40, 100)]
    body = plain(http, "/v1/predict", {"model": "sine-regressor", "inputs": sequences})
    assert len(body["outputs"]) == 3 and all(len(o) == 3 for o in body["outputs"])
    assert body["usage"]["prompt_tokens"] == 156


@pytest.mark.parametrize("model", ["text-lm", "text-lm-moe", "text-lm-draft"])
def test_generate_streamed_equals_not_streamed(http: httpx.Client, model: str) -> None:
    request = {"model": model, "prompt": "def main(", "max_new_tokens": 24, "stop": []}
    whole = plain(http, "/v1/generate", request)
    outputs, done = streamed(http, "/v1/generate", request)
    assert outputs == whole["outputs"] and len(outputs) == 24
    assert done["finish_reason"] == whole["finish_reason"] == "length"
    assert done["usage"] == whole["usage"] == {
        "prompt_tokens": 9, "completion_tokens": 24, "cached_tokens": 0,
    }  # fmt: skip
    assert isinstance(whole["text"], str)


def test_value_generation_streamed_equals_not_streamed(http: httpx.Client) -> None:
    context = [[0.5 * ((i % 8) / 8.0)] for i in range(40)]
    request = {"model": "sine-forecaster", "input": context, "max_new_tokens": 12}
    whole = plain(http, "/v1/generate", request)
    outputs, _ = streamed(http, "/v1/generate", request)
    assert len(outputs) == 12 and all(len(v) == 1 for v in outputs)
    assert all(abs(a[0] - b[0]) < 1e-6 for a, b in zip(outputs, whole["outputs"], strict=True))


def test_seq2seq_streamed_equals_not_streamed(http: httpx.Client) -> None:
    request = {"model": "digits-seq2seq", "input": [3, 1, 4, 1, 5, 9, 2, 6], "max_new_tokens": 40}
    whole = plain(http, "/v1/seq2seq", request)
    outputs, done = streamed(http, "/v1/seq2seq", request)
    assert outputs == whole["outputs"]
    assert outputs[:8] == [6, 2, 9, 5, 1, 4, 1, 3]  # the reversal comes first
    assert done["finish_reason"] == "stop"


def test_speculative_equals_target_alone_with_statistics(http: httpx.Client) -> None:
    request = {"model": "text-lm", "prompt": "import os\nimport ", "max_new_tokens": 32, "stop": []}
    target = plain(http, "/v1/generate", request)
    body = {**request, "draft_model": "text-lm-draft", "draft_steps": 4}
    spec = plain(http, "/v1/speculative", body)
    assert spec["outputs"] == target["outputs"]
    stats = spec["speculative"]
    assert stats["proposed"] >= stats["accepted"] > 0 and 0 < stats["alpha"] <= 1
    outputs, done = streamed(http, "/v1/speculative", body)
    assert outputs == target["outputs"] and done["speculative"] == stats


def test_session_over_three_calls_equals_one_call_on_the_history(http: httpx.Client) -> None:
    opened = http.post("/v1/sessions", json={"model": "text-lm"})
    assert opened.status_code == 201
    session = opened.json()["session_id"]
    assert opened.headers["x-session-id"] == session
    history: list[int] = []
    turns = ["class Stack:\n", "    def push(self", ", item):\n"]
    for i, text in enumerate(turns):
        new = list(text.encode())
        request = {"input": new, "max_new_tokens": 10, "stop": []}
        if i == 1:  # the header route: POST /v1/generate with X-Session-ID
            response = http.post(
                "/v1/generate",
                json={"model": "text-lm", **request},
                headers={"X-Session-ID": session},
            )
            outputs = response.json()["outputs"]
            usage = response.json()["usage"]
        elif i == 2:
            outputs, done = streamed(http, f"/v1/sessions/{session}/generate", request)
            usage = done["usage"]
        else:
            body = plain(http, f"/v1/sessions/{session}/generate", request)
            outputs, usage = body["outputs"], body["usage"]
        whole = {"model": "text-lm", "input": history + new, "max_new_tokens": 10, "stop": []}
        stateless = plain(http, "/v1/generate", whole)
        assert outputs == stateless["outputs"], f"turn {i}"
        if i:
            assert usage["cached_tokens"] == len(history) - 1
        history += new + outputs
    info = http.get(f"/v1/sessions/{session}").json()
    assert info["length"] == len(history) and info["model"] == "text-lm"
    assert http.delete(f"/v1/sessions/{session}").json() == {"session_id": session, "deleted": True}
    assert http.get(f"/v1/sessions/{session}").status_code == 404


def _ttft_count(http: httpx.Client, model: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "kvserve:time_to_first_token_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count") and sample.labels.get("model") == model:
                    return sample.value
    return 0.0


def test_metrics_parse_and_count_the_requests_just_made(http: httpx.Client) -> None:
    before = _ttft_count(http, "text-lm-moe")
    for _ in range(3):
        plain(http, "/v1/generate", {"model": "text-lm-moe", "prompt": "x", "max_new_tokens": 2})
    assert _ttft_count(http, "text-lm-moe") == before + 3
    names = {f.name for f in text_string_to_metric_families(http.get("/metrics").text)}
    for name in ("kvserve:inter_token_latency_seconds", "kvserve:e2e_request_latency_seconds",
                 "kvserve:request_queue_time_seconds", "kvserve:num_requests_running",
                 "kvserve:num_requests_waiting", "kvserve:kv_cache_usage_perc"):  # fmt: skip
        assert name in names, name


def test_sigterm_drains_running_streams_then_exits_0() -> None:
    with live_server(models=["text-lm"]) as running:
        result: dict[str, Any] = {}

        def stream() -> None:
            body = {"model": "text-lm", "prompt": "a", "max_new_tokens": 300, "stream": True}
            body["stop"] = []
            with httpx.Client(base_url=running.url, timeout=TIMEOUT) as client:
                result["text"] = client.post("/v1/generate", json=body).text

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(0.5)  # the stream is running
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(
            f"{running.url}/v1/generate", json={"model": "text-lm", "prompt": "b"}, timeout=TIMEOUT
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "unavailable"
        reader.join(60)
        events = sse_events(result["text"])
        assert events[-1][0] == "done" and events[-1][1]["usage"]["completion_tokens"] == 300
        assert running.process.wait(60) == 0


def _sample(http: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_a_client_that_disconnects_cancels_its_stream(
    http: httpx.Client, server: LiveServer
) -> None:
    gone = {"model": "text-lm", "error_type": "gone"}
    before = _sample(http, "kvserve:request_failure_total", **gone)
    body = {"model": "text-lm", "prompt": "x", "max_new_tokens": 480, "stream": True, "stop": []}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as other:
        with other.stream("POST", "/v1/generate", json=body) as response:
            lines = response.iter_lines()
            tokens = 0
            while tokens < 3:
                tokens += next(lines).startswith("event: token")
        closed = time.monotonic()  # leaving the block closes the connection
    while _sample(http, "kvserve:worker_requests_running", worker="0") > 0:
        assert time.monotonic() - closed < 1.0, "the abandoned stream kept running"
        time.sleep(0.02)
    assert _sample(http, "kvserve:request_failure_total", **gone) == before + 1


def test_every_openapi_example_works_against_the_demos(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    session = http.post("/v1/sessions", json={"model": "text-lm"}).json()["session_id"]
    tried = 0
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            ref = body["schema"].get("$ref", "")
            examples = components.get(ref.rsplit("/", 1)[-1], {}).get("examples", [])
            for example in examples:
                url = path.replace("{session_id}", session)
                response = http.request(method.upper(), url, json=example)
                assert response.status_code in (200, 201), (path, example, response.text)
                tried += 1
    assert tried >= 8


def test_the_openai_package_completes_against_the_server(server: LiveServer) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=60)
    whole = client.completions.create(model="text-lm", prompt="def ", max_tokens=8, temperature=0)
    text = whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens <= 8
    chunks = client.completions.create(
        model="text-lm", prompt="def ", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == text
