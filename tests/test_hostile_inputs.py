"""Hostile inputs against a real `kvserve serve` (issue 8, point 2): each is answered
with a 4xx error object (or, for a client too slow to answer, a closed connection within
a stated bound), and after each the server is healthy: ready, and a small greedy
generate gives the same output as before any of them.

Bodies of 100 MB, deeply nested JSON, NaN/Infinity/1e309, 10^6-element sequences,
negative and huge max_new_tokens, token ids out of range, wrong dtypes, empty inputs,
top_p/temperature out of range, unicode model names, path traversal in model and session
ids, slowloris headers and bodies, 1,000 sessions on one key, SSE clients that never
read. Bounds are the test server's settings (`body_timeout_s` and
`stream_send_timeout_s` of 2 s) plus a stated slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import select
import socket
import struct
import termios
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from http.client import HTTPConnection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from model_core.recipes import bundled_dir
from server.connection_guard import ABORT
from server.redis_sessions import RedisSessionStore
from server.sessions import InMemorySessionStore, SessionLimitError
from server.sse import ClosingStreamingResponse
from tests.live_server import LiveServer, live_server
from tests.metrics_reader import metric
from tests.redis_server import redis_server

KEY, OTHER_KEY, FILLER_KEY = "key-a", "key-b", "key-c"
BODY_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 2.0
MAX_BODY = 8 * 2**20  # 10^6 token ids (2 MB) fit; 10^6 value vectors of 9 bytes do not
SLACK_S = 1.5  # a cut-off lands within its timeout plus this (timer checks, a loaded CI)
MiB = 2**20
ROOT = Path(__file__).resolve().parent.parent
SMALL = {"model": "text-lm", "prompt": "def ", "max_new_tokens": 8, "stop": []}
MODELS = ["text-lm", "text-lm-draft", "sine-forecaster", "sine-regressor", "digits-seq2seq"]
FLAGS = [
    "--api-keys", f"{KEY},{OTHER_KEY},{FILLER_KEY}",
    "--body-timeout-s", str(BODY_TIMEOUT_S),
    "--stream-send-timeout-s", str(SEND_TIMEOUT_S),
    "--max-body-bytes", str(MAX_BODY),
]  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(MODELS, args=FLAGS) as running:  # max_sessions_per_key: the default
        yield running


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def baseline(http: httpx.Client) -> list[int]:
    """A small greedy generate's output before any hostile input."""
    response = http.post("/v1/generate", json=SMALL)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


@pytest.fixture
def healthy_after(server: LiveServer, http: httpx.Client, baseline: list[int]) -> Iterator[None]:
    """After the test: ready, the same output as before, no traceback or error logged."""
    yield
    assert http.get("/health/ready").status_code == 200
    response = http.post("/v1/generate", json=SMALL)
    assert response.status_code == 200 and response.json()["outputs"] == baseline
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def assert_error(response: Any, status: int | tuple[int, ...], param: str | None = None) -> str:
    """The API's error object with a 4xx status; returns its message."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"} and error["message"], error
    if param is not None:
        assert (error["param"] or "").startswith(param), (param, error)
    return error["message"]


def post_raw(http: httpx.Client, path: str, raw: bytes) -> httpx.Response:
    return http.post(path, content=raw, headers={"Content-Type": "application/json"})


# Raw sockets: what httpx would not send (paths as written, dribbled bytes, no reading).
def address(server: LiveServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server: LiveServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so that the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(address(server))
    return sock


def head(path: str, headers: list[str], key: str = KEY, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: kvserve", f"Authorization: Bearer {key}"]
    lines += ["Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def error_of(response: bytes) -> dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]


class RssPeak:
    """The peak RSS growth of a process while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / MiB


# 100 MB bodies.
def send_100_mb(server: LiveServer, chunked: bool) -> dict[str, Any]:
    """Send a 100 MB body at ~13 MB/s (64 KiB every 5 ms), reading whatever comes back,
    until it is all sent or the server closes. Returns the response and when it came."""
    total = 100 * 10**6
    framing = ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {total}"]
    sock = connect(server)
    sock.sendall(head("/v1/generate", framing))
    piece = b"1," * 32768
    if chunked:
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    start = time.monotonic()
    sent, response, answered_after, closed_at = 0, b"", None, None
    while sent < total and closed_at is None:
        if select.select([sock], [], [], 0)[0]:
            data = sock.recv(65536)
            if not data:
                closed_at = time.monotonic() - start
                break
            response += data
            answered_after = sent if answered_after is None else answered_after
        try:
            sock.sendall(piece)
            sent += len(piece)
        except OSError:  # the server closed the connection (EPIPE or a reset)
            closed_at = time.monotonic() - start
        time.sleep(0.005)
    with contextlib.suppress(OSError):
        sock.settimeout(2)
        while data := sock.recv(65536):
            response += data
    sock.close()
    return {"response": response, "answered_after": answered_after, "sent": sent,
            "closed_at": closed_at}  # fmt: skip


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_100_mb_body_gets_413_without_being_read_or_buffered(
    server: LiveServer, healthy_after: None, chunked: bool
) -> None:
    with RssPeak(server.process.pid) as rss:
        run = send_100_mb(server, chunked)
    assert status_of(run["response"]) == 413
    assert error_of(run["response"])["type"] == "body_too_large"
    # With Content-Length the 413 comes before any body byte is read; chunked, once the
    # bytes read pass max_body_bytes. Either way the rest is not read: the server closes
    # the connection body_timeout_s after the headers.
    assert run["answered_after"] < (MAX_BODY + 8 * MiB if chunked else 4 * MiB), run["sent"]
    assert run["closed_at"] is not None and run["closed_at"] < BODY_TIMEOUT_S + SLACK_S
    assert run["sent"] < 60 * 10**6
    assert rss.growth_mib < 32, rss.growth_mib
    print(f"100 MB body ({'chunked' if chunked else 'Content-Length'}): 413 after "
          f"{run['answered_after'] / MiB:.1f} MiB sent, closed at {run['closed_at']:.2f} s "
          f"after {run['sent'] / MiB:.0f} MiB, RSS peak +{rss.growth_mib:.1f} MiB")  # fmt: skip


def test_deeply_nested_json_gets_a_4xx_not_a_recursion_error(
    http: httpx.Client, healthy_after: None
) -> None:
    depth = 100_000
    bodies = [
        b"[" * depth,
        b"[" * depth + b"]" * depth,
        b'{"model": "text-lm", "input": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"a":' * depth + b"1" + b"}" * depth,
    ]
    for path in ("/v1/generate", "/v1/completions", "/v1/sessions", "/v1/predict"):
        for raw in bodies:
            assert_error(post_raw(http, path, raw), (400, 422))


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]
NUMBER_FIELDS = [
    ("/v1/generate", '{"model": "text-lm", "prompt": "x", "temperature": %s}', "temperature"),
    ("/v1/generate", '{"model": "text-lm", "prompt": "x", "top_p": %s}', "top_p"),
    ("/v1/generate", '{"model": "text-lm", "prompt": "x", "max_new_tokens": %s}', "max_new_tokens"),
    ("/v1/generate", '{"model": "text-lm", "prompt": "x", "top_k": %s}', "top_k"),
    ("/v1/generate", '{"model": "text-lm", "prompt": "x", "seed": %s}', "seed"),
    ("/v1/generate", '{"model": "text-lm", "input": [1, %s]}', "input"),
    ("/v1/generate", '{"model": "sine-forecaster", "input": [[0.5], [%s]]}', "input"),
    ("/v1/predict", '{"model": "sine-regressor", "inputs": [[[0.5], [%s]]]}', "inputs"),
    ("/v1/seq2seq", '{"model": "digits-seq2seq", "input": [1], "start": [%s]}', "start"),
    ("/v1/sessions", '{"model": "text-lm", "ttl_s": %s}', "ttl_s"),
    ("/v1/completions", '{"model": "text-lm", "prompt": "x", "temperature": %s}', "temperature"),
    ("/v1/completions", '{"model": "text-lm", "prompt": "x", "top_p": %s}', "top_p"),
    ("/v1/completions", '{"model": "text-lm", "prompt": "x", "max_tokens": %s}', "max_tokens"),
    ("/v1/completions", '{"model": "text-lm", "prompt": "x", "n": %s}', "n"),
    ("/v1/completions", '{"model": "text-lm", "prompt": "x", "seed": %s}', "seed"),
    ("/v1/completions", '{"model": "text-lm", "prompt": "x", "presence_penalty": %s}', "presence"),
]


def test_nan_infinity_and_1e309_get_422(http: httpx.Client, healthy_after: None) -> None:
    for path, template, param in NUMBER_FIELDS:
        for value in NON_FINITE:
            response = post_raw(http, path, (template % value).encode())
            assert_error(response, 422, param)


def million(item: bytes, n: int = 10**6) -> bytes:
    return b"[" + b",".join([item] * n) + b"]"


def test_million_element_sequences_get_a_4xx(http: httpx.Client, healthy_after: None) -> None:
    ids, vectors = million(b"0"), million(b"[0]")
    within = [  # under max_body_bytes: parsed, then refused by a limit
        ("/v1/generate", b'{"model": "text-lm", "max_new_tokens": 2, "input": %s}' % ids),
        ("/v1/generate", b'{"model": "text-lm", "prompt": "x", "stop": %s}' % ids),
        ("/v1/generate", b'{"model": "sine-forecaster", "input": %s}' % vectors),
        ("/v1/seq2seq", b'{"model": "digits-seq2seq", "input": [1], "start": %s}' % ids),
        ("/v1/completions", b'{"model": "text-lm", "prompt": %s}' % ids),
        ("/v1/completions", b'{"model": "text-lm", "prompt": "x", "stop": %s}' % million(b'"a"')),
    ]
    for path, raw in within:
        assert len(raw) <= MAX_BODY
        start = time.monotonic()
        assert_error(post_raw(http, path, raw), 422)
        print(f"10^6 items, {len(raw) / MiB:.1f} MiB to {path}: 422 in "
              f"{time.monotonic() - start:.2f} s")  # fmt: skip
    over = [
        ("/v1/generate", b'{"model": "sine-forecaster", "input": %s}' % million(b"[0.1234]")),
        ("/v1/predict", b'{"model": "sine-regressor", "inputs": [%s]}' % million(b"[0.1234]")),
    ]
    for path, raw in over:
        assert len(raw) > MAX_BODY
        assert_error(post_raw(http, path, raw), 413)


HUGE = [-1, 0, 10**12, 2**63 - 1, 2**63, 2**64, -(2**63), 10**100]


def test_negative_and_huge_max_new_tokens_get_422(http: httpx.Client, healthy_after: None) -> None:
    session = http.post("/v1/sessions", json={"model": "text-lm"}).json()["session_id"]
    for n in HUGE:
        cases = [
            ("/v1/generate", {**SMALL, "max_new_tokens": n}, "max_new_tokens"),
            ("/v1/speculative", {**SMALL, "max_new_tokens": n, "draft_model": "text-lm-draft"},
             "max_new_tokens"),
            ("/v1/seq2seq", {"model": "digits-seq2seq", "input": [1], "max_new_tokens": n},
             "max_new_tokens"),
            (f"/v1/sessions/{session}/generate", {"prompt": "x", "max_new_tokens": n},
             "max_new_tokens"),
            ("/v1/completions", {"model": "text-lm", "prompt": "x", "max_tokens": n},
             "max_tokens"),
        ]  # fmt: skip
        for path, body, param in cases:
            assert_error(http.post(path, json=body), 422, param)
    assert http.get(f"/v1/sessions/{session}").json()["length"] == 0  # nothing appended


def test_token_ids_out_of_range_and_negative_get_422(
    http: httpx.Client, healthy_after: None
) -> None:
    for bad in (-1, -(2**63), 259, 2**31, 2**63, 2**64):
        cases = [
            ("/v1/generate", {"model": "text-lm", "input": [0, bad]}, "input.1"),
            ("/v1/generate", {**SMALL, "stop": [bad]}, "stop.0"),
            ("/v1/speculative", {"model": "text-lm", "input": [bad], "draft_model": "text-lm-draft",
                                 "max_new_tokens": 2}, "input.0"),
            ("/v1/seq2seq", {"model": "digits-seq2seq", "input": [bad]}, "input.0"),
            ("/v1/seq2seq", {"model": "digits-seq2seq", "input": [1], "start": [bad]}, "start.0"),
            ("/v1/completions", {"model": "text-lm", "prompt": [bad]}, "prompt"),
            ("/v1/completions", {"model": "text-lm", "prompt": [[1], [bad]]}, "prompt.1"),
        ]  # fmt: skip
        for path, body, param in cases:
            assert_error(http.post(path, json=body), 422, param)


WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    (path, {**base, field: value}, field)
    for path, base, fields in [
        ("/v1/generate", SMALL, {
            "max_new_tokens": ["8", "eight", True, 8.5, {}, [8], None],
            "temperature": ["0.5", True, {}, [0.5]],
            "top_k": ["4", True, 4.5], "top_p": ["0.9", True], "seed": ["1", True, 1.5],
            "stream": ["true", 1, None], "stop": ["x", [True], ["1"], {"0": 1}],
            "input": ["1,2", [True], ["1"], {"0": 1}, [1.5]], "prompt": [5, ["x"], True, {}],
            "model": [5, True, None, ["text-lm"], {}],
        }),
        ("/v1/generate", {"model": "sine-forecaster", "max_new_tokens": 2}, {
            "input": [[[True]], [["0.5"]], [[{}]], [[None]]],
        }),
        ("/v1/predict", {"model": "sine-regressor", "inputs": [[[0.5]]]}, {
            "inputs": ["x", [[["0.1"]]], [[[False]]], {"a": 1}],
        }),
        ("/v1/sessions", {"model": "text-lm"}, {"ttl_s": ["600", True, {}], "model": [1]}),
        ("/v1/completions", {"model": "text-lm", "prompt": "x"}, {
            "max_tokens": ["16", True, 16.5], "n": ["2", True], "temperature": ["1", False],
            "echo": ["yes", 1], "stream": ["true", 1], "seed": ["1", True],
            "prompt": [[True], [1.5], {"a": 1}, 5], "stop": [[1], {"a": 1}],
            "stream_options": ["yes", {"include_usage": "yes"}],
        }),
    ]
    for field, values in fields.items()
    for value in values
]  # fmt: skip


def test_wrong_dtypes_get_422_naming_the_field(http: httpx.Client, healthy_after: None) -> None:
    for path, body, field in WRONG_TYPES:
        assert_error(http.post(path, json=body), 422, field)


def test_empty_inputs_get_a_4xx(http: httpx.Client, healthy_after: None) -> None:
    for path in ("/v1/generate", "/v1/completions", "/v1/sessions", "/v1/predict"):
        for raw in (b"", b"{}", b"[]", b'""', b"null", b"0"):
            assert_error(post_raw(http, path, raw), (400, 422))
    session = http.post("/v1/sessions", json={"model": "text-lm"}).json()["session_id"]
    cases = [
        ("/v1/generate", {"model": "text-lm", "prompt": ""}, "prompt"),
        ("/v1/generate", {"model": "text-lm", "input": []}, "input"),
        ("/v1/generate", {"model": "sine-forecaster", "input": [[]]}, "input.0"),
        ("/v1/predict", {"model": "sine-regressor", "inputs": []}, "inputs"),
        ("/v1/predict", {"model": "sine-regressor", "inputs": [[]]}, "inputs.0"),
        ("/v1/seq2seq", {"model": "digits-seq2seq", "input": []}, "input"),
        ("/v1/completions", {"model": "text-lm", "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": "text-lm", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "text-lm", "prompt": [[]]}, "prompt"),
        ("/v1/completions", {"model": "text-lm", "prompt": ["x", ""]}, "prompt.1"),
        (f"/v1/sessions/{session}/generate", {"prompt": ""}, "prompt"),
        (f"/v1/sessions/{session}/generate", {}, "input"),
    ]
    for path, body, param in cases:
        assert_error(http.post(path, json=body), 422, param)
    for path, body in [
        ("/v1/generate", {"model": "", "prompt": "x"}),
        ("/v1/completions", {"model": "", "prompt": "x"}),
        ("/v1/sessions", {"model": ""}),
    ]:
        assert_error(http.post(path, json=body), 404, "model")
    unauthenticated = http.post("/v1/generate", json=SMALL, headers={"Authorization": "Bearer"})
    assert_error(unauthenticated, 401)


def test_top_p_and_temperature_out_of_range_get_422(
    http: httpx.Client, healthy_after: None
) -> None:
    cases = [("/v1/generate", SMALL, "temperature", t) for t in (-0.001, -1, 100.001, 1e6)]
    cases += [("/v1/generate", SMALL, "top_p", p) for p in (0, -0.1, 1.0000001, 2)]
    completion = {"model": "text-lm", "prompt": "x"}
    cases += [("/v1/completions", completion, "temperature", t) for t in (-0.5, 2.001, 50)]
    cases += [("/v1/completions", completion, "top_p", p) for p in (0, -1, 1.5)]
    for path, base, field, value in cases:
        assert_error(http.post(path, json={**base, field: value}), 422, field)


UNICODE_NAMES = [
    "\uff54\uff45\uff58\uff54-lm",  # fullwidth "text": NFKC would make it "text-lm"
    "模型", "\u202etext-lm", "text-lm\u202e", "\u200ftext-lm", "🤖", "text-lm🤖",
    "text-lm\x00", "\x00", "text-lm\n", " text-lm", "TEXT-LM", "text\u2010lm", "text-lm\u200b",
]  # fmt: skip


def test_unicode_model_names_get_404(http: httpx.Client, healthy_after: None) -> None:
    for name in UNICODE_NAMES:
        for path, body in [
            ("/v1/generate", {"model": name, "prompt": "x"}),
            ("/v1/completions", {"model": name, "prompt": "x"}),
            ("/v1/sessions", {"model": name}),
            ("/v1/predict", {"model": name, "inputs": [[[0.1]]]}),
        ]:
            message = assert_error(http.post(path, json=body), 404, "model")
            assert repr(name) in message  # the name as sent, escaped, never normalised
        quoted = urllib.parse.quote(name, safe="")
        assert_error(http.get(f"/v1/models/{quoted}"), 404, "model_id")
    # A lone surrogate is valid JSON (an escape) but not text; invalid UTF-8 in a path.
    lone = b'{"model": "text-lm\\ud800", "prompt": "x"}'
    assert_error(post_raw(http, "/v1/generate", lone), 404, "model")
    prompt = b'{"model": "text-lm", "prompt": "x\\ud800"}'
    for path in ("/v1/generate", "/v1/completions"):
        assert_error(post_raw(http, path, prompt), 422, "prompt")
    assert_error(http.get("/v1/models/%ED%A0%80%FF"), 404, "model_id")


def leaked(text: str, sent: str) -> list[str]:
    """What a response shows that it must not: a file's content, a server path, a
    trace (what the client sent, echoed back in an error message, aside)."""
    text = text.replace(json.dumps(repr(sent))[1:-1], "").replace(json.dumps(sent)[1:-1], "")
    marks = ["root:x:0:0", "Traceback", "class ServerSettings", str(ROOT), "site-packages"]
    return [mark for mark in marks if mark in text]


def raw_get(
    server: LiveServer,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b'{"prompt": "x"}',
) -> tuple[int, str]:
    """A request with its path exactly as written (httpx would normalise `..`)."""
    connection = HTTPConnection(*address(server), timeout=30)
    body = body if method == "POST" else None
    connection.request(
        method,
        path,
        body,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})},
    )
    response = connection.getresponse()
    status, text = response.status, response.read().decode()
    connection.close()
    return status, text


def test_path_traversal_in_model_and_session_ids_reads_no_file(
    server: LiveServer, http: httpx.Client, healthy_after: None, tmp_path: Path
) -> None:
    copied = tmp_path / "text-lm"  # a real checkpoint outside the model directory
    copied.mkdir()
    for part in (bundled_dir() / "text-lm").iterdir():
        (copied / part.name).write_bytes(part.read_bytes())
    model_ids = [
        "../text-lm", "./text-lm", "text-lm/", "text-lm/../text-lm", "../../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/etc/passwd",
        str(bundled_dir() / "text-lm"), str(copied), "file:///etc/passwd",
        "C:\\Windows\\win.ini", "..\\..\\server\\settings.py",
    ]  # fmt: skip
    for name in model_ids:
        for path, body in [
            ("/v1/generate", {"model": name, "prompt": "x"}),
            ("/v1/completions", {"model": name, "prompt": "x"}),
            ("/v1/sessions", {"model": name}),
            ("/v1/speculative", {"model": "text-lm", "prompt": "x", "draft_model": name}),
        ]:
            response = http.post(path, json=body)
            assert_error(response, 404)
            assert not leaked(response.text, name), (name, response.text)
        quoted = urllib.parse.quote(name, safe="")  # %2F is a / to the router: no route
        response = http.get(f"/v1/models/{quoted}")
        if name == "text-lm/":  # the router's trailing-slash redirect, to the same server
            assert response.status_code == 307
            assert response.headers["location"].endswith("/v1/models/text-lm")
            continue
        assert_error(response, 404)
        assert not leaked(response.text, name)
    session = http.post("/v1/sessions", json={"model": "text-lm"}).json()["session_id"]
    raw_ids = [
        "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd", "/etc/passwd", "..", f"{session}%2f..%2f..", f"..%2f{session}",
        "%00", "sess_" + "A" * 10_000,
    ]  # fmt: skip
    for raw in raw_ids:
        for method, path in [
            ("GET", f"/v1/sessions/{raw}"),
            ("DELETE", f"/v1/sessions/{raw}"),
            ("POST", f"/v1/sessions/{raw}/generate"),
            ("GET", f"/v1/models/{raw}"),
            ("GET", f"/static/{raw}"),
        ]:
            status, text = raw_get(server, method, path)
            assert 400 <= status < 500 and "error" in json.loads(text), (path, status, text)
            assert not leaked(text, urllib.parse.unquote(raw)), (path, text)
        generate = json.dumps(SMALL).encode()
        status, text = raw_get(server, "POST", "/v1/generate", {"X-Session-ID": raw}, generate)
        assert status == 404 and not leaked(text, raw), text
    for path in ("/static/../settings.py", "/static/..%2fsettings.py", "/static/%2e%2e/app.py"):
        status, text = raw_get(server, "GET", path)
        assert status == 404 and not leaked(text, path), (path, text)
    assert http.get(f"/v1/sessions/{session}").status_code == 200  # untouched


# Slow clients: a byte at a time.
def dribble(server: LiveServer, first: bytes, drip: bytes, every_s: float) -> dict[str, Any]:
    """Send `first`, then one byte of `drip` every `every_s`; returns what came back and
    when the server closed the connection (None: not within 15 s)."""
    sock = connect(server)
    sock.sendall(first)
    start = time.monotonic()
    response, closed_at, i = b"", None, 0
    while time.monotonic() - start < 15:
        if select.select([sock], [], [], every_s)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                closed_at = time.monotonic() - start
                break
            response += data
        elif drip:
            with contextlib.suppress(OSError):
                sock.send(drip[i % len(drip) : i % len(drip) + 1])
                i += 1
    sock.close()
    return {"response": response, "closed_at": closed_at, "bytes_dripped": i}


def test_slowloris_clients_are_cut_off_while_others_are_served(
    server: LiveServer, http: httpx.Client, baseline: list[int], healthy_after: None
) -> None:
    body = b'{"model": "text-lm", "prompt": "x"}' * 30
    clients = {
        # Headers done, then a byte of the body every half second: 408 at the deadline.
        "slow body": (head("/v1/generate", [f"Content-Length: {len(body)}"]), body, 408),
        # A header byte every half second: 408 at the deadline, before any route runs.
        "slow headers": (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n", b"X-Slow: y" * 9, 408),
        # A connection that never sends anything.
        "idle": (b"", b"", 408),
        # Answered at once (wrong key), then the body it did not read dribbles on.
        "slow body, wrong key": (
            head("/v1/generate", [f"Content-Length: {len(body)}"], key="wrong"), body, 401,
        ),
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, first: bytes, drip: bytes) -> None:
        results[name] = dribble(server, first, drip, 0.5)

    threads = [threading.Thread(target=run, args=(n, c[0], c[1])) for n, c in clients.items()]
    for thread in threads:
        thread.start()
    latencies = []
    while any(thread.is_alive() for thread in threads):
        start = time.monotonic()
        assert http.get("/health/ready").status_code == 200
        response = http.post("/v1/generate", json=SMALL)
        assert response.json()["outputs"] == baseline
        latencies.append(time.monotonic() - start)
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    assert max(latencies) < 2.0, latencies  # others served meanwhile, not queued behind
    for name, (_, _, status) in clients.items():
        run = results[name]
        assert status_of(run["response"]) == status, (name, run)
        error_of(run["response"])  # the error object
        assert run["closed_at"] is not None, name
        assert run["closed_at"] < BODY_TIMEOUT_S + SLACK_S, (name, run["closed_at"])
        if status == 408:
            assert run["closed_at"] > BODY_TIMEOUT_S - 0.2, (name, run["closed_at"])
        print(f"slowloris {name}: {status} and closed at {run['closed_at']:.2f} s "
              f"({run['bytes_dripped']} bytes dripped); others' worst latency "
              f"{max(latencies) * 1000:.0f} ms over {len(latencies)} requests")  # fmt: skip


def test_one_key_holds_at_most_1000_sessions(server: LiveServer, healthy_after: None) -> None:
    def client(key: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})

    with client(FILLER_KEY) as filler, client(OTHER_KEY) as other:
        start = time.monotonic()
        opened = []
        for _ in range(1000):
            response = filler.post("/v1/sessions", json={"model": "text-lm"})
            assert response.status_code == 201, response.text
            opened.append(response.json()["session_id"])
        took = time.monotonic() - start
        refused = filler.post("/v1/sessions", json={"model": "text-lm"})
        message = assert_error(refused, 429)
        assert refused.json()["error"]["type"] == "too_many_sessions"
        assert "close" in message and "max_sessions_per_key" in message, message
        assert int(refused.headers["retry-after"]) >= 1
        assert other.post("/v1/sessions", json={"model": "text-lm"}).status_code == 201
        assert other.get(f"/v1/sessions/{opened[0]}").status_code == 404  # bound to its key
        assert filler.delete(f"/v1/sessions/{opened[0]}").status_code == 200
        assert filler.post("/v1/sessions", json={"model": "text-lm"}).status_code == 201
        assert filler.post("/v1/sessions", json={"model": "text-lm"}).status_code == 429
        print(f"1000 sessions on one key opened in {took:.1f} s; the 1001st: 429")


def test_store_limits_per_owner_in_memory() -> None:
    async def scenario() -> None:
        store = InMemorySessionStore(max_per_owner=3)
        mine = [await store.create("m", "alice", 60) for _ in range(3)]
        with pytest.raises(SessionLimitError, match="close"):
            await store.create("m", "alice", 60)
        await store.create("m", "bob", 60)  # another owner still opens
        for _ in range(5):
            await store.create("m", None, 60)  # no keys: only max_sessions applies
        assert await store.delete(mine[0].id, "alice")
        await store.create("m", "alice", 60)
        with pytest.raises(SessionLimitError):
            await store.create("m", "alice", 60)

    asyncio.run(scenario())


def test_store_limits_per_owner_across_replicas_on_redis() -> None:
    """Two replicas sharing one Redis, creating at once: the limit holds exactly (the
    check and the insert are one Lua script)."""

    async def scenario(url: str) -> None:
        replicas = [RedisSessionStore(url, prefix="hostile:", max_per_owner=5) for _ in range(2)]
        tries = [replicas[i % 2].create("m", "alice", 60) for i in range(20)]
        results = await asyncio.gather(*tries, return_exceptions=True)
        created = [r for r in results if not isinstance(r, BaseException)]
        assert len(created) == 5
        assert all(isinstance(r, SessionLimitError) for r in results if r not in created)
        await replicas[1].create("m", "bob", 60)
        assert await replicas[1].delete(created[0].id, "alice")
        await replicas[0].create("m", "alice", 60)
        with pytest.raises(SessionLimitError):
            await replicas[0].create("m", "alice", 60)
        full = RedisSessionStore(url, prefix="hostile-all:", max_sessions=3, max_per_owner=5)
        for owner in ("alice", "bob", None):
            await full.create("m", owner, 60)
        with pytest.raises(SessionLimitError, match="session limit reached"):
            await full.create("m", "carol", 60)  # the store's own limit, checked the same way
        for store in (*replicas, full):
            await store.close()

    with redis_server() as url:
        asyncio.run(scenario(url))


# Clients that never read.


def queued(sock: socket.socket) -> int:
    """Bytes received and waiting in the socket, unread."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]


def server_holds(server: LiveServer, port: int) -> bool:
    """Whether the server process still has a connection from this client port."""
    connections = psutil.Process(server.process.pid).net_connections()
    return any(c.raddr and c.raddr.port == port for c in connections)


CHOICES = 24


def test_sse_clients_that_never_read_are_cut_off_and_cancelled(
    server: LiveServer, http: httpx.Client, baseline: list[int], healthy_after: None
) -> None:
    streams = {  # the generate first: it gets a slot before the 64 choices take them all
        "generate": ("/v1/generate", {"model": "text-lm", "prompt": "x", "max_new_tokens": 500,
                                      "stop": [], "stream": True}),
        # 24 choices x 500 tokens: ~10 s of work here if nothing cancelled it, and room
        # left in the batch (max_running 32) for other requests
        "completions": ("/v1/completions", {"model": "text-lm", "prompt": "x", "max_tokens": 500,
                                            "n": CHOICES, "stream": True, "temperature": 1.0}),
    }  # fmt: skip
    gone_before = metric(http, "kvserve:request_failure_total", error_type="gone")
    eos_before = metric(http, "kvserve:request_success_total", finish_reason="stop")
    sockets = {}
    with RssPeak(server.process.pid) as rss:
        start = time.monotonic()
        for name, (path, body) in streams.items():
            raw = json.dumps(body).encode()
            sock = connect(server, rcvbuf=4096)  # and never read from it
            sock.sendall(head(path, [f"Content-Length: {len(raw)}"]) + raw)
            sockets[name] = sock
        ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}
        dropped: dict[str, float] = {}
        # When the bytes waiting in our socket last grew: after that the client's window
        # is shut, and the server's clock for a client that takes nothing runs.
        full_at = dict.fromkeys(sockets, 0.0)
        held = dict.fromkeys(sockets, 0)
        running_seen, latencies = [], []
        while len(dropped) < len(ports) and time.monotonic() - start < 30:
            t = time.monotonic()
            response = http.post("/v1/generate", json=SMALL)
            assert response.json()["outputs"] == baseline
            latencies.append(time.monotonic() - t)
            running = metric(http, "kvserve:worker_requests_running")
            now = time.monotonic() - start
            running_seen.append((now, running))
            for name, port in ports.items():
                if name not in dropped and not server_holds(server, port):
                    dropped[name] = now
                elif name not in dropped and queued(sockets[name]) > held[name]:
                    held[name], full_at[name] = queued(sockets[name]), now
            time.sleep(0.1)
        while metric(http, "kvserve:worker_requests_running") > 0:
            assert time.monotonic() - start < 30, "the abandoned requests kept running"
            time.sleep(0.05)
        idle_at = time.monotonic() - start
    for sock in sockets.values():
        sock.close()
    assert set(dropped) == set(streams), dropped
    after_full = {name: at - full_at[name] for name, at in dropped.items()}
    assert all(s < SEND_TIMEOUT_S + SLACK_S for s in after_full.values()), (after_full, held)
    assert all(at < 15 for at in dropped.values()), dropped
    # The choices were still running when their client was dropped (cancelled, not
    # finished), and stopped soon after (but the generate's one, dropped on its own).
    cut = dropped["completions"]
    assert any(running >= CHOICES for at, running in running_seen if cut - 1.0 <= at < cut), (
        cut, running_seen,
    )  # fmt: skip
    after_cut = [running for at, running in running_seen if cut <= at < cut + SLACK_S]
    # (what may remain: the generate's stream and a probe of ours)
    assert min(after_cut, default=0) <= 2 or idle_at < cut + SLACK_S, (cut, running_seen)
    assert idle_at - max(dropped.values()) < SLACK_S, (idle_at, dropped)
    assert metric(http, "kvserve:worker_requests_waiting") == 0
    # Every choice (and the generate) counted: gone, or ended by an EOS before the cut.
    gone = metric(http, "kvserve:request_failure_total", error_type="gone") - gone_before
    eos = metric(http, "kvserve:request_success_total", finish_reason="stop") - eos_before
    assert gone + eos == CHOICES + 1 and gone > CHOICES // 2, (gone, eos)
    assert max(latencies) < 2.0, latencies
    assert rss.growth_mib < 48, rss.growth_mib
    print(f"SSE never read: dropped at {dropped} s, {after_full} s after the client's "
          f"window shut (holding {held} bytes); {gone:.0f} requests cancelled, {eos:.0f} "
          f"ended by EOS before; engine idle at "
          f"{idle_at:.2f} s; others' worst latency {max(latencies) * 1000:.0f} ms; "
          f"RSS peak +{rss.growth_mib:.1f} MiB")  # fmt: skip


def test_a_stalled_stream_is_given_up_in_process() -> None:
    """The app's own guard (any ASGI server): a send that waits past the timeout ends the
    stream, closes its generator (whose `finally` cancels the request) and drops the
    connection where the server offers a way, else cancels the stream's task."""

    async def scenario(with_abort: bool) -> dict[str, Any]:
        seen: dict[str, Any] = {"generator_closed": False, "on_close": False, "aborted": False}
        client_gone = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            try:
                for _ in range(1000):
                    await asyncio.sleep(0.001)  # the next token
                    yield b"event: token\ndata: {}\n\n"
            finally:
                seen["generator_closed"] = True

        async def receive() -> dict[str, Any]:
            await client_gone.wait()
            return {"type": "http.disconnect"}

        sent: list[Any] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if len(sent) > 3 and not client_gone.is_set():
                await client_gone.wait()  # the client stopped reading: the send waits

        def abort() -> None:
            seen["aborted"] = True
            client_gone.set()  # as uvicorn does when its transport is aborted

        settings = SimpleNamespace(stream_send_timeout_s=0.2)
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"spec_version": "2.3"}, "client": ("127.0.0.1", 1),
            "app": SimpleNamespace(state=SimpleNamespace(settings=settings)),
        }  # fmt: skip
        if with_abort:
            scope["extensions"] = {ABORT: {"abort": abort}}
        response = ClosingStreamingResponse(body(), on_close=lambda: seen.update(on_close=True))
        start = time.monotonic()
        await asyncio.wait_for(response(scope, receive, send), 5)
        seen["took"] = time.monotonic() - start
        seen["sent"] = len(sent)
        return seen

    for with_abort in (True, False):
        seen = asyncio.run(scenario(with_abort))
        assert 0.2 <= seen["took"] < 0.6, seen
        assert seen["generator_closed"] and seen["on_close"] and seen["sent"] < 50, seen
        assert seen["aborted"] == with_abort
