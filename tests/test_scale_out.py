"""Two kvserve replicas behind nginx (docker/nginx.conf) with sessions in Redis — real
processes: affinity, failover after kill -9, rolling restart without losing a stream."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.live_server import LiveServer, live_server
from tests.nginx_router import nginx_router
from tests.redis_server import redis_server

TIMEOUT = httpx.Timeout(60.0)


@dataclass
class Cluster:
    url: str  # nginx
    replicas: dict[str, LiveServer]  # by X-Replica name


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(redis_server())
        replicas = {}
        for name in ("replica-a", "replica-b"):
            env = {"KVSERVE_SESSION_STORE": store, "KVSERVE_REPLICA_NAME": name}
            replicas[name] = stack.enter_context(live_server(models=["text-lm"], env=env))
        addresses = [r.url.removeprefix("http://") for r in replicas.values()]
        yield Cluster(stack.enter_context(nginx_router(addresses)), replicas)


def turn(http: httpx.Client, session: str, text: str, new: int = 6) -> httpx.Response:
    body = {"prompt": text, "max_new_tokens": new, "stop": []}
    response = http.post(f"/v1/sessions/{session}/generate", json=body)
    assert response.status_code == 200, response.text
    return response


def stateless(url: str, tokens: list[int], new: int = 6) -> list[int]:
    body = {"model": "text-lm", "input": tokens, "max_new_tokens": new, "stop": []}
    return httpx.post(f"{url}/v1/generate", json=body, timeout=TIMEOUT).json()["outputs"]


def rebuilds(server: LiveServer) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "kvserve:kv_cache_rebuilds_total"
    )


def test_affinity_then_failover_to_the_other_replica() -> None:
    with cluster() as c, httpx.Client(base_url=c.url, timeout=TIMEOUT) as http:
        session = http.post("/v1/sessions", json={"model": "text-lm"}).json()["session_id"]
        history: list[int] = []
        served_by = set()
        for i, text in enumerate(["def area(r):", "\n    return", " 3.14"]):
            response = turn(http, session, text)
            body = response.json()
            served_by.add(response.headers["x-replica"])
            if i:  # the replica reused its cache: everything but the last output
                assert body["usage"]["cached_tokens"] == len(history) - 1
            history += list(text.encode()) + body["outputs"]
        assert len(served_by) == 1, served_by  # every turn on the same replica
        home = served_by.pop()
        assert rebuilds(c.replicas[home]) == 0

        # Failover: what the home replica would produce next, then kill -9 it.
        new_text = " * r"
        expected = stateless(c.replicas[home].url, history + list(new_text.encode()))
        c.replicas[home].process.send_signal(signal.SIGKILL)
        c.replicas[home].process.wait(10)
        response = turn(http, session, new_text)
        assert response.headers["x-replica"] != home
        assert response.json()["usage"]["cached_tokens"] == 0  # rebuilt from Redis
        assert response.json()["outputs"] == expected
        # The survivor keeps the session from now on, with its cache.
        again = turn(http, session, "\n")
        assert again.headers["x-replica"] == response.headers["x-replica"]
        assert again.json()["usage"]["cached_tokens"] > 0


def test_rolling_restart_loses_no_stream() -> None:
    with cluster() as c:
        results: list[Any] = []
        stop_sending = threading.Event()

        def stream(i: int) -> None:
            body = {"model": "text-lm", "prompt": f"# {i}\n", "max_new_tokens": 120,
                    "stop": [], "stream": True}  # fmt: skip
            with httpx.Client(base_url=c.url, timeout=TIMEOUT) as http:
                text = http.post("/v1/generate", json=body).text
            last = text.strip().split("\n\n")[-1]
            results.append((i, last))

        def keep_sending() -> None:
            n = 100
            while not stop_sending.is_set():
                stream(n)
                n += 1

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
        threads += [threading.Thread(target=keep_sending) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        leaving = c.replicas["replica-a"]
        leaving.process.send_signal(signal.SIGTERM)  # drains, then exits
        assert leaving.process.wait(60) == 0
        time.sleep(0.5)  # new requests keep going to replica-b meanwhile
        stop_sending.set()
        for thread in threads:
            thread.join(120)
        assert len(results) >= 8
        for i, last in results:
            event, data = last.split("\n", 1)
            assert event == "event: done", (i, last)
            assert json.loads(data.removeprefix("data: "))["usage"]["completion_tokens"] == 120
