"""Faults, end to end over HTTP against a real `kvserve serve`: a worker killed with
SIGKILL mid-stream, a KV budget too small for the sessions, clients that vanish
mid-stream, SIGTERM under load, a model directory with corrupt checkpoints.

What other tests already prove is not repeated here: the engine's error event within 2 s
and a session rebuilt after a restart (test_engine_pool), eviction leaving outputs
unchanged in the scheduler (test_engine_scheduler::test_200_sessions_within_a_small_budget),
one disconnected stream stopping within a second and counted as `gone`, and one stream
drained by SIGTERM (test_http_live), broken checkpoints named by the repository scan
(test_model_repository). Each test here prints the figure it measured (`-s` shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from safetensors.torch import save_file

from model_core.recipes import bundled_dir
from server.engine.worker import STATS_INTERVAL_S
from tests.live_server import LiveServer, live_server
from tests.metrics_reader import metric
from tests.model_factories import regression_model

MODEL = "text-lm"  # slow enough (6 layers) that a 400-token stream is still running
ROW_MIB = 1.5  # one text-lm sequence at its max_seq_len of 512 (6 layers x 2 x 2 x 32 x 4 B)
MAX_RUNNING = 8
BUDGET_MIB = int(ROW_MIB * MAX_RUNNING)  # room for exactly the 8 running rows
TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    flags = ["--kv-budget-mb", str(BUDGET_MIB), "--max-running", str(MAX_RUNNING)]
    with live_server([MODEL], args=[*flags, "--request-timeout-s", "60"]) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


# ---- helpers ------------------------------------------------------------------------------


def settled(http: httpx.Client, name: str, **labels: str) -> float:
    """`metric` once the workers' snapshot has caught up with what just happened (they
    report every STATS_INTERVAL_S): two reads an interval apart agree."""
    value = metric(http, name, **labels)
    while True:
        time.sleep(2 * STATS_INTERVAL_S)
        value, before = metric(http, name, **labels), value
        if value == before:
            return value


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until true; returns the seconds it took (workers report every 0.25 s)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - start


def sse_blocks(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of an SSE response as the events arrive."""
    kind, data = "message", None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif not line and data is not None:
            yield kind, data
            kind, data = "message", None
    if data is not None:
        yield kind, data


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def stateless(http: httpx.Client, tokens: list[int], n: int = 8) -> list[int]:
    """The uncached oracle: one plain generate on the whole history."""
    body = {"model": MODEL, "input": tokens, "max_new_tokens": n, "stop": []}
    return post(http, "/v1/generate", body)["outputs"]


class Conversation:
    """A session and the history the client knows it holds."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.id = post(http, "/v1/sessions", {"model": MODEL})["session_id"]
        self.history: list[int] = []

    def turn(self, new: list[int], n: int = 8) -> dict[str, Any]:
        """One turn; asserts it equals the uncached run on the history; returns usage."""
        body = {"input": new, "max_new_tokens": n, "stop": []}
        answer = post(self.http, f"/v1/sessions/{self.id}/generate", body)
        assert answer["outputs"] == stateless(self.http, self.history + new, n)
        self.history += new + answer["outputs"]
        return answer["usage"]


def printable(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32, 127) for _ in range(n)]


def worker_pids(server: LiveServer) -> set[int]:
    """The server's spawned worker processes (not multiprocessing's resource tracker)."""
    pids = set()
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def figure(name: str, value: object) -> None:
    print(f"\nFIGURE {name}: {value}")


# ---- (a) kill -9 of a worker mid-stream --------------------------------------------------


def test_kill_9_mid_stream_ends_it_with_an_error_event_and_the_session_rebuilds(
    server: LiveServer, http: httpx.Client
) -> None:
    chat = Conversation(http)
    assert chat.turn(list(b"class Stack:\n"))["cached_tokens"] == 0
    (pid,) = worker_pids(server)
    died = {"model": MODEL, "error_type": "worker_died"}
    failed = metric(http, "kvserve:request_failure_total", **died)

    # The session's own second turn is the stream the kill hits.
    second = list(b"    def push(self")
    body = {"input": second, "max_new_tokens": 400, "stop": [], "stream": True}
    events: list[tuple[str, dict[str, Any]]] = []
    killed = 0.0
    with http.stream("POST", f"/v1/sessions/{chat.id}/generate", json=body) as response:
        assert response.status_code == 200
        for kind, data in sse_blocks(response):
            events.append((kind, data))
            if kind == "token" and not killed:
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
    error_after_s = time.monotonic() - killed

    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "error" and "done" not in kinds, kinds[-3:]
    error = events[-1][1]["error"]
    assert (error["type"], error["param"]) == ("worker_died", None)
    assert "restarting" in error["message"] and "retry" in error["message"]
    streamed = [data["token"] for kind, data in events if kind == "token"]
    assert 1 <= len(streamed) < 400
    assert error_after_s < 2.0

    # Until the new worker is up, requests are refused with 503 + Retry-After; then served.
    refused = 0
    while True:
        small = {"model": MODEL, "prompt": "ok", "max_new_tokens": 1}
        probe = http.post("/v1/generate", json=small)
        if probe.status_code == 200:
            break
        assert probe.status_code == 503 and probe.headers["retry-after"], probe.text
        assert probe.json()["error"]["type"] in ("unavailable", "worker_died")
        refused += 1
        assert time.monotonic() - killed < 60, "the worker did not come back in 60 s"
        time.sleep(0.02)
    recovery_s = time.monotonic() - killed
    assert http.get("/health/ready").status_code == 200
    new_pids = worker_pids(server)
    assert len(new_pids) == 1 and pid not in new_pids
    assert metric(http, "kvserve:request_failure_total", **died) == failed + 1
    figure("kill -9 -> event: error (ms)", round(error_after_s * 1000))
    figure("kill -9 -> next successful generate (ms)", round(recovery_s * 1000))
    figure("requests refused with 503 meanwhile", refused)

    # The history kept everything streamed before the kill; the new worker rebuilds the
    # cache from it (cached 0), then caches again; every turn equals the uncached run.
    chat.history += second + streamed
    assert http.get(f"/v1/sessions/{chat.id}").json()["length"] == len(chat.history)
    assert chat.turn(list(b", item):\n"))["cached_tokens"] == 0
    length = len(chat.history)
    assert chat.turn(list(b"        self"))["cached_tokens"] == length - 1


# ---- (b) KV budget exhausted -------------------------------------------------------------


def _concurrent_streams(url: str, count: int, n: int) -> list[str]:
    """`count` streamed generates at once; the kind of the last event of each."""
    last: list[str] = []

    def one(i: int) -> None:
        body = {"model": MODEL, "prompt": f"stream {i}", "max_new_tokens": n, "stop": []}
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            response = client.post("/v1/generate", json={**body, "stream": True})
            assert response.status_code == 200, response.text
            last.append(response.text.strip().split("\n\n")[-1].splitlines()[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return last


def test_a_kv_budget_too_small_evicts_lru_sessions_and_fails_nothing(
    server: LiveServer, http: httpx.Client
) -> None:
    rng = random.Random(8)
    evictions = settled(http, "kvserve:kv_cache_evictions_total")
    rebuilds = settled(http, "kvserve:kv_cache_rebuilds_total")
    failures = metric(http, "kvserve:request_failure_total")
    budget = metric(http, "kvserve:kv_cache_budget_bytes")
    assert budget == BUDGET_MIB * 2**20

    # 12 sessions of ~250 tokens (~750 KiB of cache each) after the batch's 4 rows (6 MiB):
    # about 8 fit, so the oldest are evicted as the newest park.
    chats = [Conversation(http) for _ in range(12)]
    for chat in chats:
        chat.turn(printable(rng, 240))
    wait_for(lambda: metric(http, "kvserve:kv_cache_evictions_total") > evictions, 2, "evictions")
    misses = 0
    newest, oldest = chats[-1], chats[0]
    assert newest.turn(printable(rng, 4))["cached_tokens"] > 0  # still parked
    assert oldest.turn(printable(rng, 4))["cached_tokens"] == 0  # evicted first, rebuilt
    misses += 1

    # Eight streams at once want all eight rows of the budget: parked caches make room.
    assert _concurrent_streams(server.url, MAX_RUNNING, 48) == ["event: done"] * MAX_RUNNING

    # Every session continues, evicted ones rebuilt from their history, with the outputs
    # of the uncached run (checked in `turn`).
    for chat in chats:
        misses += chat.turn(printable(rng, 4))["cached_tokens"] == 0
    assert misses > 1
    wait_for(
        lambda: metric(http, "kvserve:kv_cache_rebuilds_total") - rebuilds == misses,
        2,
        "a rebuild counted for every turn that found no cache",
    )
    evicted = metric(http, "kvserve:kv_cache_evictions_total") - evictions
    assert evicted >= misses
    assert metric(http, "kvserve:request_failure_total") == failures
    assert metric(http, "kvserve:kv_cache_used_bytes") <= budget
    figure("sessions / evictions / rebuilds (12 sessions, 3 turns, 12 MiB)", (12, evicted, misses))


# ---- (c) client disconnects mid-stream ----------------------------------------------------


def test_disconnected_streams_stop_free_their_rows_and_are_counted(
    server: LiveServer, http: httpx.Client
) -> None:
    """Eight clients (a full batch: every row of the budget) read one token and leave."""
    gone = {"model": MODEL, "error_type": "gone"}
    gone_before = metric(http, "kvserve:request_failure_total", **gone)
    body = {"model": MODEL, "prompt": "x", "max_new_tokens": 480, "stop": [], "stream": True}
    readers = []  # kept: a dropped reader would close its connection at once
    with contextlib.ExitStack() as clients:
        for _ in range(MAX_RUNNING):
            client = clients.enter_context(httpx.Client(base_url=server.url, timeout=TIMEOUT))
            response = clients.enter_context(client.stream("POST", "/v1/generate", json=body))
            readers.append(sse_blocks(response))
            next(readers[-1])  # one token: it runs
        wait_for(
            lambda: metric(http, "kvserve:worker_requests_running") == MAX_RUNNING,
            2,
            "all eight running at once",
        )
        used_full = metric(http, "kvserve:kv_cache_used_bytes")
    # Leaving the block closed the eight connections. A full batch of 480-token streams
    # runs for several seconds; cancelled, the worker's batch is empty within a few steps.
    stopped_s = wait_for(
        lambda: metric(http, "kvserve:worker_requests_running") == 0, 1.5, "the streams stopped"
    )
    wait_for(
        lambda: metric(http, "kvserve:request_failure_total", **gone) == gone_before + 8,
        2,
        "eight disconnects counted as gone",
    )
    # The rows are free: the cache did not grow past the full batch, and a second full
    # batch runs (were the cancelled rows still held, it could not get rows in the budget).
    assert metric(http, "kvserve:kv_cache_used_bytes") <= used_full
    assert _concurrent_streams(server.url, MAX_RUNNING, 16) == ["event: done"] * MAX_RUNNING
    figure("disconnect -> worker batch empty (ms, 8 streams)", round(stopped_s * 1000))


# ---- (d) SIGTERM under load --------------------------------------------------------------


def _start_streams(url: str, count: int, n: int) -> tuple[list[threading.Thread], list[str]]:
    """`count` streams of `n` tokens in threads, returned once each has a first token."""
    texts: list[str] = [""] * count
    started = [threading.Event() for _ in range(count)]

    def one(i: int) -> None:
        body = {"model": MODEL, "prompt": f"s{i}", "max_new_tokens": n, "stop": [], "stream": True}
        try:
            with (
                httpx.Client(base_url=url, timeout=TIMEOUT) as client,
                client.stream("POST", "/v1/generate", json=body) as response,
            ):
                for chunk in response.iter_text():
                    texts[i] += chunk
                    started[i].set()
        except httpx.HTTPError as exc:  # cut off: what arrived stays in texts[i]
            texts[i] += f"\n\nCUT {type(exc).__name__}"
        finally:
            started[i].set()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for event in started:
        assert event.wait(60)
    return threads, texts


def _last_event(text: str) -> tuple[str, dict[str, Any] | None]:
    block = text.strip().split("\n\n")[-1]
    if block.startswith("CUT"):
        return block, None
    fields = dict(line.split(": ", 1) for line in block.splitlines())
    return fields.get("event", "message"), json.loads(fields["data"])


def test_sigterm_under_load_finishes_every_stream_refuses_new_work_and_exits_0() -> None:
    drain_timeout_s = 30
    with live_server([MODEL], args=["--drain-timeout-s", str(drain_timeout_s)]) as running:
        threads, texts = _start_streams(running.url, 4, 200)
        sent = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        refused = httpx.post(
            f"{running.url}/v1/generate", json={"model": MODEL, "prompt": "b"}, timeout=TIMEOUT
        )
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["type"] == "unavailable"
        assert httpx.get(f"{running.url}/health/ready", timeout=TIMEOUT).status_code == 503
        for thread in threads:
            thread.join(60)
        code = running.process.wait(drain_timeout_s + 10)
        exited_s = time.monotonic() - sent
    for text in texts:
        kind, data = _last_event(text)
        assert kind == "done" and data is not None, text[-300:]
        assert data["usage"]["completion_tokens"] == 200
    assert code == 0
    assert exited_s < drain_timeout_s
    figure("SIGTERM with 4 running 200-token streams -> exit 0 (s)", round(exited_s, 2))


@pytest.mark.slow
def test_sigterm_past_the_drain_timeout_never_ends_a_stream_with_a_false_done() -> None:
    """Streams longer than the drain timeout may run on during uvicorn's 5 s shutdown
    grace; then they are cut off. Either way none ends with a `done` it did not reach,
    and the process exits 0 after the drain timeout plus that grace."""
    n = 500
    with live_server([MODEL], args=["--drain-timeout-s", "1"]) as running:
        threads, texts = _start_streams(running.url, MAX_RUNNING, n)
        sent = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        code = running.process.wait(30)
        exited_s = time.monotonic() - sent
    ends = [_last_event(text) for text in texts]
    for kind, data in ends:
        if kind == "done":
            assert data is not None and data["usage"]["completion_tokens"] == n
        else:
            assert kind.startswith("CUT") or kind == "error", kind
    assert code == 0 and exited_s < 1 + 5 + 10
    figure(
        "SIGTERM, drain timeout 1 s, 8 x 500-token streams: exit 0 after (s)", round(exited_s, 2)
    )
    figure("how the streams ended", [kind for kind, _ in ends])


# ---- (e) a model directory with corrupt checkpoints ---------------------------------------


def _model_dir(root: Path) -> dict[str, str]:
    """good: a copy of text-lm-draft; and three broken copies, with the reason each breaks
    (what the server log must say)."""
    source = bundled_dir() / "text-lm-draft"
    for name in ("good", "truncated", "garbage-config", "mismatched"):
        shutil.copytree(source, root / name)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "garbage-config" / "config.json").write_text("{not json")
    # A readable safetensors file with another model's tensors: the scan passes (it reads
    # only the header); loading on the worker fails.
    tensors = {k: v.contiguous() for k, v in regression_model().state_dict().items()}
    save_file(tensors, root / "mismatched" / "model.safetensors")
    return {
        "truncated": "not a readable safetensors file",
        "garbage-config": "not a readable JSON file",
        "mismatched": "does not match the model",
    }


def test_corrupt_checkpoints_are_reported_by_name_and_the_others_served(tmp_path: Path) -> None:
    broken = _model_dir(tmp_path)
    with live_server(args=["--model-dir", str(tmp_path)]) as running:
        http = httpx.Client(base_url=running.url, timeout=TIMEOUT)
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["good"]
        assert http.get("/health/ready").status_code == 200
        good = {"model": "good", "prompt": "def ", "max_new_tokens": 4}
        assert len(post(http, "/v1/generate", good)["outputs"]) == 4
        log = running.log()
        for name, why in broken.items():
            line = next((x for x in log.splitlines() if f"model {name} is not served" in x), "")
            assert why in line, (name, log[-3000:])
            for path, body in (
                ("/v1/generate", {**good, "model": name}),
                ("/v1/sessions", {"model": name}),
            ):
                refused = http.post(path, json=body)
                assert refused.status_code == 404, refused.text
                error = refused.json()["error"]
                assert error["type"] == "model_not_found" and name in error["message"]
                assert "good" in error["message"]  # what is served instead
            assert http.get(f"/v1/models/{name}").status_code == 404
        http.close()
