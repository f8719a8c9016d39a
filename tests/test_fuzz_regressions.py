"""What the schema fuzzing (tests/test_fuzz_schema.py) found, each as a plain test.

Server failures (500s):
- a `top_p` below float32's range (1.0238185724037511e-151, from schemathesis on
  /v1/completions) became 0 in the worker's float32 comparison, every token was dropped,
  and sampling from all-zero probabilities failed: a 500;
- likewise a `temperature` below float32's range (1e-40, 1e-300: found next to it)
  divided the logits by 0: NaN probabilities, a 500.
Both now sample as their limit, greedy: only the most likely token.
- a value far larger than a value model can compute with (-8.58e224, from schemathesis on
  a sine-forecaster session; 1e20 is enough for sine-regressor) made its outputs inf or
  NaN, which JSON cannot carry: a 500 (and `NaN` inside a stream's events). Such a
  request now fails as invalid: a 422, or `event: error` in a stream.

Schema declarations (the answers were right, the schema did not say them): a body that
is not UTF-8 gets a 400; GET /v1/models/{model_id} a 404; /metrics is text/plain; every
error is our error object, FastAPI's HTTPValidationError nowhere; the session route
streams Server-Sent Events; streams declare each event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from model_core.sampling import SamplingParams, probabilities
from server.app import create_app
from server.settings import ServerSettings

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    models = ["text-lm", "text-lm-draft", "sine-forecaster", "sine-regressor"]
    app = create_app(ServerSettings(models=models, max_new_tokens=16))
    with TestClient(app) as test_client:
        yield test_client


# Sampling at float32's edges.
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_p=1.0238185724037511e-151),
        SamplingParams(temperature=1e-40),
        SamplingParams(temperature=1e-300, top_k=5),
    ],
)
def test_probabilities_at_float32_edges_are_the_greedy_choice(params: SamplingParams) -> None:
    logits = torch.randn(3, 259, generator=torch.Generator().manual_seed(0))
    probs = probabilities(logits, params)
    assert torch.equal(probs, probabilities(logits, SamplingParams()))


GREEDY = {"model": "text-lm", "prompt": "def ", "max_new_tokens": 12}
EDGES = [
    {"temperature": 1.0, "top_p": 1.0238185724037511e-151, "seed": 3},
    {"temperature": 1e-40, "seed": 3},
    {"temperature": 5e-324},
]


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("route", ["/v1/generate", "/v1/speculative"])
def test_sampling_at_float32_edges_is_greedy_not_a_500(
    client: TestClient, route: str, edge: dict[str, Any]
) -> None:
    extra = {"draft_model": "text-lm-draft"} if route == "/v1/speculative" else {}
    greedy = client.post(route, json={**GREEDY, **extra})
    assert greedy.status_code == 200, greedy.text
    edged = client.post(route, json={**GREEDY, **extra, **edge})
    assert edged.status_code == 200, edged.text
    assert edged.json()["outputs"] == greedy.json()["outputs"]
    streamed = client.post(route, json={**GREEDY, **extra, **edge, "stream": True})
    assert streamed.status_code == 200
    assert streamed.text.count("event: token") == 12 and "event: error" not in streamed.text


def test_completion_found_by_the_fuzzer(client: TestClient) -> None:
    body = {"top_p": 1.0238185724037511e-151, "model": "text-lm", "prompt": "scheme"}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    greedy = client.post("/v1/completions", json={**body, "top_p": 1.0, "temperature": 0})
    assert response.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert client.get("/health/ready").status_code == 200


# Values a value model cannot compute with.
HUGE = [-8.582441084879467e224, 1e30, 1e20]


@pytest.mark.parametrize("huge", HUGE)
def test_outputs_that_are_not_finite_get_422_not_500(client: TestClient, huge: float) -> None:
    body = {"model": "sine-regressor", "inputs": [[[huge], [0.3]], [[0.1], [0.2]]]}
    predicted = client.post("/v1/predict", json=body)
    assert predicted.status_code == 422, predicted.text
    assert "not a finite number" in predicted.json()["error"]["message"]
    generate = {"model": "sine-forecaster", "input": [[huge], [0.5]], "max_new_tokens": 4}
    response = client.post("/v1/generate", json=generate)
    # The fuzzer's value makes the forecaster's outputs non-finite; 1e20 it copes with.
    assert response.status_code in ((422,) if huge == HUGE[0] else (200, 422)), response.text
    if response.status_code == 200:
        assert len(response.json()["outputs"]) == 4
    streamed = client.post("/v1/generate", json={**generate, "stream": True})
    assert streamed.status_code == 200
    ends = [line for line in streamed.text.splitlines() if line in ("event: done", "event: error")]
    assert ends == ["event: error" if response.status_code == 422 else "event: done"]
    for line in streamed.text.splitlines():  # every event's data is JSON (no NaN, Infinity)
        if line.startswith("data: "):
            json.loads(line[6:], parse_constant=_refuse)


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def test_a_session_given_a_huge_value_fails_that_turn_and_stays_usable(client: TestClient) -> None:
    opened = client.post("/v1/sessions", json={"model": "sine-forecaster"}).json()["session_id"]
    path = f"/v1/sessions/{opened}/generate"
    turn = client.post(path, json={"input": [[-8.582441084879467e224]], "max_new_tokens": 2})
    assert turn.status_code == 422, turn.text
    assert client.get(f"/v1/sessions/{opened}").json()["busy"] is False
    assert client.delete(f"/v1/sessions/{opened}").status_code == 200
    assert client.get("/health/ready").status_code == 200


# Schema declarations.
def responses(client: TestClient, method: str, path: str) -> dict[str, Any]:
    return client.app.openapi()["paths"][path][method]["responses"]


def test_a_body_that_is_not_utf8_gets_a_declared_400(client: TestClient) -> None:
    response = client.post(
        "/v1/generate", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    document = client.app.openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                declared = operation["responses"]["400"]["content"]["application/json"]
                assert declared["schema"] == ERROR_REF, (method, path)


def test_every_error_is_declared_as_our_error_object(client: TestClient) -> None:
    document = client.app.openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == ERROR_REF, (method, path, status)


def test_declared_answers_the_fuzzer_found_missing(client: TestClient) -> None:
    assert client.get("/v1/models/nope").status_code == 404
    assert "404" in responses(client, "get", "/v1/models/{model_id}")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert list(responses(client, "get", "/metrics")["200"]["content"]) == ["text/plain"]
    opened = client.post("/v1/sessions", json={"model": "text-lm"}).json()["session_id"]
    streamed = client.post(
        f"/v1/sessions/{opened}/generate", json={"prompt": "x", "max_new_tokens": 2, "stream": True}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    declared = responses(client, "post", "/v1/sessions/{session_id}/generate")["200"]
    assert "itemSchema" in declared["content"]["text/event-stream"]
    assert declared["headers"]["X-Session-ID"]["required"]
    for status in ("429", "503"):
        assert "Retry-After" in responses(client, "post", "/v1/generate")[status]["headers"]


def test_keys_are_declared_only_when_the_server_has_them() -> None:
    without = create_app(ServerSettings(models=["text-lm"])).openapi()
    assert "securitySchemes" not in without["components"]
    assert "401" not in without["paths"]["/v1/generate"]["post"]["responses"]
    keyed = create_app(ServerSettings(models=["text-lm"], api_keys=["k"])).openapi()
    assert keyed["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "401" in keyed["paths"]["/v1/generate"]["post"]["responses"]
    assert "401" not in keyed["paths"]["/health/ready"]["get"]["responses"]
