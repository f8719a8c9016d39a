"""Every bad request gets its status and the API's error object, and the server stays
healthy: validation (422 with the offending field), 404, 409, 413, 429, 503, never 500."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings

MODELS = ["text-lm", "text-lm-draft", "sine-regressor", "sine-forecaster", "digits-seq2seq"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(ServerSettings(models=MODELS, max_body_bytes=64 * 1024, max_new_tokens=64))
    with TestClient(app) as test_client:
        yield test_client


def assert_error(
    response: Any, status: int, error_type: str | None = None, param: str | None = None
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"} and error["message"]
    if error_type is not None:
        assert error["type"] == error_type, error
    if param is not None:
        assert error["param"] == param, error


VALID = {"model": "text-lm", "prompt": "def ", "max_new_tokens": 4}

CASES_422 = [
    ("/v1/generate", {**VALID, "temperature": -1}, "temperature"),
    ("/v1/generate", {**VALID, "top_p": 0}, "top_p"),
    ("/v1/generate", {**VALID, "top_k": 0}, "top_k"),
    ("/v1/generate", {**VALID, "penalty": 1.2}, "penalty"),
    ("/v1/generate", {**VALID, "max_new_tokens": 65}, "max_new_tokens"),
    ("/v1/generate", {**VALID, "max_new_tokens": 0}, "max_new_tokens"),
    ("/v1/generate", {"model": "text-lm", "input": [1, 300], "max_new_tokens": 2}, "input.1"),
    ("/v1/generate", {"model": "text-lm", "input": [[0.5]], "max_new_tokens": 2}, "input.0"),
    ("/v1/generate", {"model": "text-lm", "max_new_tokens": 2}, "input"),
    ("/v1/generate", {"model": "text-lm", "input": [1], "prompt": "x"}, "input"),
    (
        "/v1/generate",
        {"model": "text-lm", "input": [1] * 500, "max_new_tokens": 64},
        "max_new_tokens",
    ),
    ("/v1/generate", {"model": "sine-forecaster", "input": [[1.0, 2.0]]}, "input.0"),
    ("/v1/generate", {"model": "sine-forecaster", "prompt": "text"}, "prompt"),
    ("/v1/generate", {"model": "text-lm", "prompt": "x", "stop": [999]}, "stop.0"),
    ("/v1/predict", {"model": "sine-regressor", "inputs": [[0.1, 0.2]]}, "inputs.0.0"),
    ("/v1/predict", {"model": "sine-regressor", "inputs": []}, "inputs"),
    ("/v1/predict", {"model": "sine-regressor", "inputs": [[]]}, "inputs.0"),
    ("/v1/predict", {"model": "sine-regressor", "inputs": [[[0.1]] * 300]}, "inputs.0"),
    ("/v1/predict", {"model": "sine-regressor", "inputs": [[[0.1]]] * 65}, "inputs"),
    ("/v1/seq2seq", {"model": "digits-seq2seq", "input": [1, 2, 99]}, "input.2"),
    ("/v1/speculative", {**VALID, "draft_model": "text-lm-draft", "draft_steps": 0}, "draft_steps"),
    ("/v1/sessions", {"model": "text-lm", "ttl_s": -5}, "ttl_s"),
]


@pytest.mark.parametrize(("path", "body", "param"), CASES_422)
def test_bad_fields_get_422_naming_the_field(
    client: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    assert_error(client.post(path, json=body), 422, "invalid_request", param)


def test_non_finite_floats_and_broken_json_get_422(client: TestClient) -> None:
    for raw in (
        b'{"model": "sine-forecaster", "input": [[NaN]]}',
        b'{"model": "sine-forecaster", "input": [[Infinity]]}',
        b'{"model": "sine-regressor", "inputs": [[[1e999]]]}',
        b'{"model": "text-lm", "prompt": ',
        b"not json",
    ):
        path = "/v1/predict" if b"inputs" in raw else "/v1/generate"
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert_error(response, 422, "invalid_request")


def test_unknown_things_get_404(client: TestClient) -> None:
    assert_error(client.post("/v1/generate", json={**VALID, "model": "nope"}), 404, param="model")
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert_error(client.get("/v1/sessions/sess_nope"), 404, "session_not_found")
    assert_error(client.delete("/v1/sessions/sess_nope"), 404, "session_not_found")
    assert_error(
        client.post("/v1/sessions/sess_nope/generate", json={"prompt": "x"}),
        404,
        "session_not_found",
    )
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_wrong_kind_of_model_gets_409(client: TestClient) -> None:
    assert_error(client.post("/v1/predict", json={"model": "text-lm", "inputs": [[[0.1]]]}), 409)
    assert_error(
        client.post("/v1/generate", json={"model": "sine-regressor", "input": [[0.1]]}), 409
    )
    assert_error(client.post("/v1/seq2seq", json={"model": "text-lm", "input": [1]}), 409)
    assert_error(client.post("/v1/sessions", json={"model": "digits-seq2seq"}), 409)
    draft_differs = {**VALID, "draft_model": "sine-forecaster"}
    assert_error(client.post("/v1/speculative", json=draft_differs), 409, param="draft_model")


def test_body_over_the_limit_gets_413_before_parsing(client: TestClient) -> None:
    big = {"model": "text-lm", "input": [1] * 40_000}
    assert_error(client.post("/v1/generate", json=big), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"model": "text-lm", "input": ['
        for _ in range(20_000):
            yield b"1, 1, "
        yield b"1]}"

    response = client.post(
        "/v1/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "body_too_large")


def test_draining_gets_503_and_readiness_says_so(client: TestClient) -> None:
    client.app.state.draining = True
    try:
        assert_error(client.post("/v1/generate", json=VALID), 503, "unavailable")
        assert_error(client.get("/health/ready"), 503)
        assert client.get("/health/live").status_code == 200
    finally:
        client.app.state.draining = False


def test_random_garbage_never_gets_a_500(client: TestClient) -> None:
    rng = random.Random(0)
    atoms: list[Any] = [
        None,
        True,
        -1,
        0,
        3.5,
        1e308,
        "",
        "x" * 50,
        [],
        {},
        [1, 2],
        [[0.1]],
        {"a": 1},
    ]
    fields = [
        "model", "input", "prompt", "inputs", "max_new_tokens", "temperature", "top_p",
        "top_k", "seed", "stop", "stream", "draft_model", "draft_steps", "start", "ttl_s",
    ]  # fmt: skip
    paths = ["/v1/generate", "/v1/predict", "/v1/seq2seq", "/v1/speculative", "/v1/sessions"]
    for _ in range(150):
        body = {f: rng.choice(atoms) for f in rng.sample(fields, rng.randint(0, 6))}
        if rng.random() < 0.5:
            body["model"] = rng.choice(MODELS)
        response = client.post(rng.choice(paths), content=json.dumps(body))
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()


def test_after_all_errors_the_server_is_healthy(client: TestClient) -> None:
    assert client.get("/health/ready").status_code == 200
    response = client.post("/v1/generate", json=VALID)
    assert response.status_code == 200 and len(response.json()["outputs"]) == 4


def test_overloaded_engine_answers_429_with_retry_after() -> None:
    settings = ServerSettings(models=["text-lm"], max_running=1, max_waiting=0)
    with TestClient(create_app(settings)) as client:
        pool = client.app.state.engine.pool
        long = {"model": "text-lm", "prompt": "a", "max_new_tokens": 400}
        busy = threading.Thread(target=lambda: client.post("/v1/generate", json=long))
        busy.start()
        deadline = time.monotonic() + 10
        while not pool.workers[0].inflight:  # the long request holds the only slot
            assert time.monotonic() < deadline
            time.sleep(0.005)
        refused = client.post("/v1/generate", json=VALID)
        assert_error(refused, 429, "overloaded")
        assert int(refused.headers["retry-after"]) >= 1
        busy.join(60)
        assert client.post("/v1/generate", json=VALID).status_code == 200
