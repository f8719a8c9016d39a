"""API keys: every route but the health routes and the playground's static page refuses a
request without a valid key (found by walking `app.routes`, so a new route cannot forget
auth); sessions belong to the key that opened them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from server.app import create_app
from server.serve_command import exposure_warning
from server.settings import ServerSettings

KEYS = ["key-alice", "key-bob"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(ServerSettings(models=["text-lm"], api_keys=",".join(KEYS)))
    with TestClient(app) as test_client:
        yield test_client


def _flat(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) of every route, looking into included routers (FastAPI keeps
    them as one entry of `app.routes`)."""
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path, route
        else:
            context = route.include_context
            yield from _flat(route.original_router.routes, prefix + context.prefix)


def _requests(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route, path parameters filled in."""
    found = []
    for full_path, route in _flat(client.app.routes):
        path = re.sub(r"\{[^}]+\}", "x", full_path)
        if isinstance(route, Mount):
            found.append(("GET", path + "/app.js"))
        elif isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    found.append((method, path))
    return found


def test_every_route_but_health_needs_a_key(client: TestClient) -> None:
    requests = _requests(client)
    paths = {p for _, p in requests}
    assert {"/v1/generate", "/v1/completions", "/metrics", "/", "/docs"} <= paths
    for method, path in requests:
        response = client.request(method, path, json={})
        if path.startswith("/health/") or path in ("/", "/static/app.js"):
            # Probes, and the playground's page and files (no data; its calls need the key).
            assert response.status_code in (200, 503), (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = client.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, (method, path)
        right = client.request(
            method, path, json={}, headers={"Authorization": f"Bearer {KEYS[0]}"}
        )
        assert right.status_code != 401, (method, path)


def test_sessions_belong_to_the_key_that_opened_them(client: TestClient) -> None:
    alice = {"Authorization": f"Bearer {KEYS[0]}"}
    bob = {"Authorization": f"Bearer {KEYS[1]}"}
    opened = client.post("/v1/sessions", json={"model": "text-lm"}, headers=alice)
    assert opened.status_code == 201
    session = opened.json()["session_id"]
    turn = {"prompt": "x", "max_new_tokens": 2}
    assert (
        client.post(f"/v1/sessions/{session}/generate", json=turn, headers=bob).status_code == 404
    )
    assert client.get(f"/v1/sessions/{session}", headers=bob).status_code == 404
    assert client.delete(f"/v1/sessions/{session}", headers=bob).status_code == 404
    assert (
        client.post(f"/v1/sessions/{session}/generate", json=turn, headers=alice).status_code == 200
    )
    assert client.delete(f"/v1/sessions/{session}", headers=alice).status_code == 200


def test_no_keys_beyond_loopback_warns() -> None:
    assert exposure_warning(ServerSettings()) is None
    assert exposure_warning(ServerSettings(host="0.0.0.0", api_keys="k")) is None
    warning = exposure_warning(ServerSettings(host="0.0.0.0"))
    assert warning is not None and "KVSERVE_API_KEYS" in warning
