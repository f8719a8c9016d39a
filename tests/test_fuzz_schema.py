"""Property-based fuzzing of the whole API from its OpenAPI schema (schemathesis).

Every operation in /openapi.json gets the schema's own examples, then generated cases,
valid ones (positive) and invalid ones (negative), in-process through ASGI (no API keys)
and against a live `kvserve serve` (with an API key). Every answer must be what the
schema declares for that operation: the status code, the content type, the headers
(Retry-After on 429/503, X-Session-ID on sessions, ...) and the body, each SSE event of a
stream included; never a 5xx. Afterwards the server is healthy: ready, serving a normal
generation, no worker restarted, nothing logged as an unexpected error.

A random string only ever names a model or a session that does not exist (a 404), so
cases are steered: some get a served model's name, some a live session's id, and on the
live server some go without the key or with a wrong one. The rest of each case is left as
generated.

The counts (cases per operation and generation mode, status codes seen) are written to
tests/artifacts/fuzz_schema_<target>.json and printed (`pytest -s`). The default suite
runs a CI-sized number of cases; `@pytest.mark.slow` runs the large one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hypothesis
import psutil
import pytest
import requests
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import ServerSettings
from tests.live_server import live_server
from tests.test_http_auth import _flat

MODELS = ["text-lm", "text-lm-draft", "sine-regressor", "sine-forecaster", "digits-seq2seq"]
# Small limits, so that each case is quick; max_new_tokens as high as the schema's
# examples ask (40), so that they are served.
LIMITS = {"max_new_tokens": 40, "max_body_bytes": 16 * 1024, "max_batch_size": 8}
KEY = "fuzz-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
VALID = {"model": "text-lm", "prompt": "def ", "max_new_tokens": 4}
SESSION_MODELS = ["text-lm", "text-lm", "sine-forecaster"]  # the live sessions cases may name
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_S = 30.0  # a case not answered by then is a hang, a failure

Mode = str  # "examples", "positive" or "negative"


@dataclass(frozen=True)
class Steer:
    """How a generated case is pointed at the server's real state (None: as generated)."""

    model: str | None  # for `model` and `model_id`
    draft: str | None  # for `draft_model`
    session: int | None  # index into the live sessions, for `session_id` and X-Session-ID
    key: str  # "right", "none" or "wrong" (only a server with keys looks)
    fit: bool = False  # a valid body brought within the server's limits (`fit_limits`)
    example: bool = False  # one of the schema's examples: sent as written (in a session)
    stream: bool = False  # sent with `stream: true`


# The models each route serves (a case names one of them half the time, any model or
# the generated name the other half).
FITTING = {
    "/v1/predict": ["sine-regressor"],
    "/v1/generate": ["text-lm", "text-lm-draft", "sine-forecaster"],
    "/v1/speculative": ["text-lm"],
    "/v1/seq2seq": ["digits-seq2seq"],
    "/v1/sessions": ["text-lm", "sine-forecaster"],
    "/v1/completions": ["text-lm"],
}
EXAMPLE = Steer(None, None, 0, "right", example=True)
Plan = tuple[Mode, st.SearchStrategy[Case], st.SearchStrategy[Steer], int]


def plans(operation: Any, keys: bool, examples: int) -> Iterator[Plan]:
    """What an operation gets: each of the schema's examples as written (and streamed,
    where the operation streams), then up to `examples` generated cases, positive and
    negative (if it has inputs to negate), steered."""
    for example in operation.get_strategies_from_examples():
        yield "examples", example, st.just(EXAMPLE), 1
        if streams(operation):
            yield "examples", example, st.just(replace(EXAMPLE, stream=True)), 1
    yield (
        "positive",
        operation.as_strategy(GenerationMode.POSITIVE),
        steers(operation, True, keys),
        examples,
    )
    if operation.body or operation.query or operation.headers:
        yield (
            "negative",
            operation.as_strategy(GenerationMode.NEGATIVE),
            steers(operation, False, keys),
            examples,
        )


def streams(operation: Any) -> bool:
    """Whether the operation declares Server-Sent Events."""
    ok = operation.definition.raw["responses"].get("200", {})
    return "text/event-stream" in ok.get("content", {})


def steers(operation: Any, positive: bool, keys: bool) -> st.SearchStrategy[Steer]:
    """An operation without inputs varies only in its key; the others are steered."""
    key = st.sampled_from(["right"] * 6 + ["none", "wrong"]) if keys else st.just("right")
    if not (operation.body or operation.query or operation.headers or operation.path_parameters):
        return st.builds(Steer, model=st.none(), draft=st.none(), session=st.none(), key=key)
    fitting = FITTING.get(operation.path, MODELS)
    return st.builds(
        Steer,
        model=st.sampled_from([None, *MODELS]) | st.sampled_from(fitting),
        draft=st.sampled_from([None, "text-lm-draft", "text-lm"]),
        session=st.sampled_from([None, 0, 1, 2]),
        key=key,
        fit=st.booleans() if positive else st.just(False),
    )


def steer(case: Case, how: Steer, sessions: list[str]) -> None:
    body = case.body
    if isinstance(body, dict):
        if how.model is not None and isinstance(body.get("model"), str):
            body["model"] = how.model
        if how.draft is not None and isinstance(body.get("draft_model"), str):
            body["draft_model"] = how.draft
        if how.fit:
            fit_limits(body)
        if how.stream:
            body["stream"] = True
    params = case.path_parameters or {}
    if how.model is not None and "model_id" in params:
        params["model_id"] = how.model
    if how.session is not None and "session_id" in params:
        params["session_id"] = sessions[how.session]
    headers = case.headers or {}
    if how.example:
        headers.pop("X-Session-ID", None)  # the examples do not continue a session
    elif how.session is not None and "X-Session-ID" in headers:
        headers["X-Session-ID"] = sessions[how.session]


INTEGERS = ("max_new_tokens", "max_tokens", "top_k", "seed", "n", "draft_steps", "best_of")


def fit_limits(body: dict[str, Any]) -> None:
    """What the schema allows but this server refuses with a 422, made to fit: more new
    tokens than its limit, an integer written 2.0 (JSON Schema's integer; the server
    takes JSON integers only), both `input` and `prompt` (it takes exactly one)."""
    for name in INTEGERS:
        value = body.get(name)
        if isinstance(value, float) and value.is_integer():
            body[name] = int(value)
    for name in ("max_new_tokens", "max_tokens"):
        if isinstance(body.get(name), int):
            body[name] = 1 + body[name] % LIMITS["max_new_tokens"]
    if "input" in body and "prompt" in body:
        del body["input"]


@dataclass
class Target:
    """Where the cases go: `send` sends one case; `client` is a plain HTTP session on the
    same server (with the key, if any), for setup and health checks."""

    name: str
    schema: schemathesis.BaseSchema
    send: Callable[[Case, Steer], schemathesis.Response]
    client: requests.Session
    base: str
    keys: bool  # the server has API keys


@dataclass
class Report:
    target: str
    seed: int
    cases: dict[str, Counter[Mode]] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    streams: Counter[str] = field(default_factory=Counter)  # SSE answers, event by event
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.cases.values())

    def write(self) -> None:
        summary = {
            "target": self.target,
            "seed": self.seed,
            "total_cases": self.total,
            "seconds": round(self.seconds, 1),
            "failures": len(self.failures),
            "cases": {op: dict(c) for op, c in self.cases.items()},
            "statuses": {op: dict(sorted(s.items())) for op, s in self.statuses.items()},
            "sse_streams": dict(self.streams),
            "distinct_failures": _distinct(self.failures),
        }
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"fuzz_schema_{self.target}.json").write_text(json.dumps(summary, indent=1))
        print(
            f"\nschemathesis fuzzing ({self.target}): {self.total} cases in {self.seconds:.0f} s, "
            f"{sum(self.streams.values())} of them SSE streams, {len(self.failures)} failures"
        )
        for op, counts in self.cases.items():
            print(f"  {op:42} {dict(counts)} statuses {dict(sorted(self.statuses[op].items()))}")


def open_sessions(client: requests.Session, base: str) -> list[str]:
    ids = []
    for model in SESSION_MODELS:
        response = client.post(f"{base}/v1/sessions", json={"model": model}, timeout=TIMEOUT_S)
        assert response.status_code == 201, response.text
        ids.append(response.json()["session_id"])
    return ids


def fuzz(target: Target, examples: int, seed: int) -> Report:
    """Every operation, every mode, up to `examples` cases each; failures are collected
    (with the curl line that reproduces each), not raised, so that one run shows all."""
    report = Report(target.name, seed)
    started = time.monotonic()
    for result in target.schema.get_all_operations():
        operation = result.ok()
        sessions = open_sessions(target.client, target.base)  # DELETE closes them
        for mode, strategy, how, n in plans(operation, target.keys, examples):
            run_cases(target, report, operation.label, mode, strategy, how, sessions, n)
    report.seconds = time.monotonic() - started
    report.write()
    return report


def run_cases(
    target: Target,
    report: Report,
    label: str,
    mode: Mode,
    strategy: st.SearchStrategy[Case],
    steering: st.SearchStrategy[Steer],
    sessions: list[str],
    examples: int,
) -> None:
    cases = report.cases.setdefault(label, Counter())
    statuses = report.statuses.setdefault(label, Counter())

    @hypothesis.seed(report.seed)
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy, how=steering)
    def run(case: Case, how: Steer) -> None:
        steer(case, how, sessions)
        cases[mode] += 1
        try:
            response = target.send(case, how)
            statuses[response.status_code] += 1
            if "text/event-stream" in str(response.headers.get("content-type")):
                report.streams[label] += 1
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup, requests.RequestException) as exc:
            report.failures.append(f"{label} [{mode}]: {exc}")
        except HypothesisException:
            raise
        except Exception as exc:  # in-process, the app's own exception comes through
            curl = case.as_curl_command()
            report.failures.append(f"{label} [{mode}]: {type(exc).__name__}: {exc}\n{curl}")

    run()


def auth_headers(how: Steer) -> dict[str, str]:
    return {"right": {"Authorization": f"Bearer {KEY}"}, "none": {}}.get(
        how.key, {"Authorization": "Bearer wrong-key"}
    )


def check_report(report: Report, schema: schemathesis.BaseSchema, at_least: int) -> None:
    operations = {result.ok().label for result in schema.get_all_operations()}
    assert operations == api_routes(), "the schema and the app's routes differ"
    unexercised = {op for op in operations if not report.cases.get(op)}
    assert not unexercised, f"operations that got no case: {unexercised}"
    assert report.total >= at_least, report.total
    assert not report.failures, f"{len(report.failures)} failures:\n" + "\n\n".join(
        _distinct(report.failures)
    )
    # The steering works: cases reach the engine (answered in JSON and streamed), not
    # only the refusals in front of it.
    inference = [op for op in operations if op.startswith("POST") and op != "POST /v1/sessions"]
    assert sum(report.statuses[op][200] for op in inference) >= 5, report.statuses
    streaming = {r.ok().label for r in schema.get_all_operations() if streams(r.ok())}
    assert streaming <= set(report.streams), report.streams


def api_routes() -> set[str]:
    """`METHOD /path` of every route of the app but the playground and its files."""
    app = create_app(ServerSettings(models=MODELS))
    routes = [(p, r) for p, r in _flat(app.routes) if isinstance(r, APIRoute)]
    return {f"{method} {path}" for path, r in routes if r.include_in_schema for method in r.methods}


def _distinct(failures: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for failure in failures:
        seen.setdefault("\n".join(failure.splitlines()[:4]), failure)
    return list(seen.values())[:20]


def check_healthy(client: requests.Session, base: str) -> None:
    assert client.get(f"{base}/health/ready", timeout=TIMEOUT_S).status_code == 200
    response = client.post(f"{base}/v1/generate", json=VALID, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"]) == 4
    streamed = client.post(f"{base}/v1/generate", json={**VALID, "stream": True}, timeout=TIMEOUT_S)
    assert streamed.status_code == 200 and streamed.text.count("event: token") == 4
    assert streamed.text.rstrip().split("\n")[-2] == "event: done", streamed.text


class ErrorLog(logging.Handler):
    """Records what kvserve logs at ERROR and above (an unexpected failure)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def seed_for(slow: bool) -> int:
    """A fixed seed in the default suite (the same cases every run); a new one per slow
    run (recorded in the artifact; KVSERVE_FUZZ_SEED replays it)."""
    if "KVSERVE_FUZZ_SEED" in os.environ:
        return int(os.environ["KVSERVE_FUZZ_SEED"])
    return random.randrange(2**32) if slow else 0


# In-process (ASGI).
def run_in_process(examples: int, at_least: int, slow: bool) -> None:
    app = create_app(ServerSettings(models=MODELS, **LIMITS))
    errors = ErrorLog()
    logging.getLogger("kvserve").addHandler(errors)
    try:
        # Loading the schema starts the app's lifespan (the engine and its workers) in
        # schemathesis's event loop thread; every case then reaches the same running app.
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        with asgi.get_client(app) as client:
            base = "http://testserver"

            def send(case: Case, how: Steer) -> schemathesis.Response:
                return case.call(timeout=TIMEOUT_S)

            target = Target("asgi", schema, send, client, base, keys=False)
            report = fuzz(target, examples, seed_for(slow))
            check_report(report, schema, at_least)
            check_healthy(client, base)
            restarts = [w["restarts"] for w in app.state.engine.stats()["workers"]]
            assert restarts == [0] * len(restarts), app.state.engine.stats()
    finally:
        logging.getLogger("kvserve").removeHandler(errors)
        asgi.shutdown_lifespans()  # stops the engine
    assert not errors.records, errors.records


def test_fuzz_in_process() -> None:
    run_in_process(examples=60, at_least=1000, slow=False)


@pytest.mark.slow
def test_fuzz_in_process_large() -> None:
    run_in_process(examples=300, at_least=5000, slow=True)


# A live server (`kvserve serve`, with an API key).
def run_live(examples: int, at_least: int, slow: bool) -> None:
    env = {"KVSERVE_API_KEYS": KEY, **{f"KVSERVE_{k.upper()}": str(v) for k, v in LIMITS.items()}}
    with live_server(MODELS, env=env) as server, requests.Session() as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        workers = {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}
        schema = schemathesis.openapi.from_url(
            server.url + "/openapi.json", headers=dict(client.headers)
        )
        with requests.Session() as http:  # the cases' own, so that no key leaks into them

            def send(case: Case, how: Steer) -> schemathesis.Response:
                return case.call(session=http, headers=auth_headers(how), timeout=TIMEOUT_S)

            target = Target("live", schema, send, client, server.url, keys=True)
            report = fuzz(target, examples, seed_for(slow))
        check_report(report, schema, at_least)
        check_healthy(client, server.url)
        after = {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}
        assert after == workers, "a worker process died and was restarted"
        problems = [
            line
            for line in server.log().splitlines()
            if "Traceback" in line or " ERROR " in line or "unhandled" in line
        ]
        assert not problems, "\n".join(problems[:20])


def test_fuzz_live_server() -> None:
    run_live(examples=20, at_least=300, slow=False)


@pytest.mark.slow
def test_fuzz_live_server_large() -> None:
    run_live(examples=100, at_least=1500, slow=True)
