"""Security: pickle is never loaded, session ids are unguessable and bound to their key,
keys are compared in constant time, no route or method skips auth, CORS is off, errors
leak no paths or stack traces.

Already proven elsewhere, not repeated: every route refuses a missing or wrong key and
takes the right one (test_http_auth::test_every_route_but_health_needs_a_key; extended
here to every method, HEAD, unknown paths and dot-segment paths); another key gets 404
for a session (test_http_auth::test_sessions_belong_to_the_key_that_opened_them; here:
the 404 is the very answer an unknown id gets); a `.pt` file in a checkpoint directory
is refused by the scan (test_model_repository; here: with a live payload, through the
server and its worker processes).
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

import server.middleware
import server.outcomes
import server.sessions
from model_core import checkpoint
from model_core.checkpoint import CheckpointError
from model_core.recipes import bundled_dir
from server import redis_sessions
from server.app import create_app
from server.cli import main as kvserve
from server.engine.protocol import INTERNAL, WORKER_DIED
from server.model_repository import ModelRepository
from server.outcomes import error_from_event
from server.routes import deps
from server.settings import ServerSettings
from tests.test_http_auth import _flat

ROOT = Path(__file__).resolve().parent.parent
MODEL = "text-lm-draft"
KEYS = ["key-first-0123456789", "key-middle", "key-last-abcdef"]
FIRST, LAST = (f"Bearer {KEYS[0]}", f"Bearer {KEYS[-1]}")
AUTH = {"Authorization": FIRST}
OTHER = {"Authorization": LAST}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(ServerSettings(models=[MODEL], api_keys=",".join(KEYS)))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# ---- (a) pickle is never loaded ----------------------------------------------------------


class Payload:
    """Unpickling this creates `marker`: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant(root: Path, marker: Path) -> None:
    """A repository: `good`; `pickle-only` (a config and pickled weights, no safetensors);
    `pickle-beside-valid` (a valid checkpoint plus pickle files); a pickle at the top."""
    source = bundled_dir() / MODEL
    shutil.copytree(source, root / "good")
    shutil.copytree(source, root / "pickle-beside-valid")
    (root / "pickle-only").mkdir()
    shutil.copy(source / "config.json", root / "pickle-only" / "config.json")
    raw = pickle.dumps({"state_dict": Payload(marker)})
    torch.save({"weights": Payload(marker)}, root / "pickle-only" / "pytorch_model.bin")
    (root / "pickle-beside-valid" / "model.pt").write_bytes(raw)
    (root / "pickle-beside-valid" / "weights.pkl").write_bytes(raw)
    (root / "weights.pkl").write_bytes(raw)


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The oracle: unpickled, these files do run their code (so the tests below could
    fail)."""
    _plant(tmp_path, tmp_path / "marker")
    pickle.loads((tmp_path / "weights.pkl").read_bytes())
    assert (tmp_path / "marker").exists()
    (tmp_path / "marker").unlink()
    torch.load(tmp_path / "pickle-only" / "pytorch_model.bin", weights_only=False)
    assert (tmp_path / "marker").exists()


def test_a_malicious_pickle_never_runs_and_its_model_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root, marker = tmp_path / "models", tmp_path / "marker"
    root.mkdir()
    _plant(root, marker)

    repo = ModelRepository(root)
    scan = repo.scan()
    assert list(scan.entries) == ["good"]
    assert set(scan.errors) == {"pickle-only", "pickle-beside-valid"}
    for why in scan.errors.values():
        assert "pickle" in why and "convert it to safetensors" in why, why
    assert set(repo.load_all()[1]) == set(scan.errors)
    for path in (root / "pickle-beside-valid", root / "pickle-only" / "pytorch_model.bin"):
        with pytest.raises(CheckpointError, match="safetensors"):
            checkpoint.load(path)
    assert kvserve(["models", "--model-dir", str(root), "--json"]) == 1
    assert "pickle" in capsys.readouterr().out

    # The server, whose worker processes scan and load the directory themselves.
    caplog.set_level(logging.ERROR, logger="kvserve")
    app = create_app(ServerSettings(model_dir=root))
    with TestClient(app) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["good"]
        for name in scan.errors:
            refused = client.post("/v1/generate", json={"model": name, "prompt": "x"})
            assert refused.status_code == 404, refused.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in scan.errors:
        assert f"model {name} is not served" in logged
    assert not marker.exists()


LOADERS = {"torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load",
           "dill.loads", "joblib.load", "cloudpickle.load", "cloudpickle.loads",
           "marshal.load", "marshal.loads", "shelve.open"}  # fmt: skip


def unsafe_loads(source: str) -> list[str]:
    """The calls in `source` that can unpickle: the LOADERS by any import alias, and
    `numpy.load(..., allow_pickle=True)` (comments and strings do not count)."""
    aliases: dict[str, str] = {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b` binds `a`; `import a.b as c` binds `c` to `a.b`.
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts = []
        func: ast.expr = node.func
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            continue
        parts.append(aliases.get(func.id, func.id))
        name = ".".join(reversed(parts))
        pickled_numpy = name == "numpy.load" and any(
            k.arg == "allow_pickle"
            and not (isinstance(k.value, ast.Constant) and not k.value.value)
            for k in node.keywords
        )
        if name in LOADERS or pickled_numpy:
            found.append((node.lineno, name))
    return [f"line {line}: {name}" for line, name in sorted(found)]


def test_the_unpickling_check_sees_calls_not_comments() -> None:
    source = (
        "import torch as t\nfrom pickle import loads as undo\nimport numpy as np\n"
        "# torch.load(path) in a comment\ns = 'pickle.load(f)'\n"
        "t.load(p)\nundo(b)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n"
    )
    assert unsafe_loads(source) == [
        "line 6: torch.load", "line 7: pickle.loads", "line 8: numpy.load",
    ]  # fmt: skip


def test_no_shipped_code_calls_an_unpickling_loader() -> None:
    files = [p for d in ("model_core", "server", "clients") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 40
    found = {
        str(p.relative_to(ROOT)): hits
        for p in files
        if (hits := unsafe_loads(p.read_text(encoding="utf-8")))
    }
    assert found == {}


# ---- (b) session ids ---------------------------------------------------------------------

SESSION_ID = re.compile(r"sess_[A-Za-z0-9_-]{32}")  # 32 base64url characters: 192 bits


def test_session_ids_carry_192_random_bits_from_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    token_urlsafe = server.sessions.secrets.token_urlsafe

    def spy(nbytes: int | None = None) -> str:
        drawn.append(nbytes or 0)
        return token_urlsafe(nbytes)

    monkeypatch.setattr(server.sessions.secrets, "token_urlsafe", spy)
    ids = {server.sessions.new_session_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(SESSION_ID.fullmatch(i) for i in ids)
    # Every id came from `secrets` (the OS's CSPRNG), 24 bytes = 192 bits >= 128.
    assert len(drawn) == 1000 and min(drawn) * 8 >= 128
    alphabet = {c for i in ids for c in i.removeprefix("sess_")}
    assert len(alphabet) == 64  # all of base64url in use: 6 bits a character
    assert redis_sessions.new_session_id is server.sessions.new_session_id


def test_sessions_opened_over_http_have_such_ids(client: TestClient) -> None:
    ids = []
    for _ in range(20):
        opened = client.post("/v1/sessions", json={"model": MODEL}, headers=AUTH)
        assert opened.status_code == 201
        ids.append(opened.json()["session_id"])
        assert client.delete(f"/v1/sessions/{ids[-1]}", headers=AUTH).status_code == 200
    assert len(set(ids)) == 20 and all(SESSION_ID.fullmatch(i) for i in ids)


def test_another_keys_session_answers_exactly_as_an_unknown_one(client: TestClient) -> None:
    """Existence does not leak: for another key, a session answers what an id that never
    existed answers, on every session route (and the X-Session-ID header)."""
    mine = client.post("/v1/sessions", json={"model": MODEL}, headers=AUTH).json()["session_id"]
    unknown = "sess_" + "A" * 32
    turn = {"prompt": "x", "max_new_tokens": 2}

    def answers(session_id: str, headers: dict[str, str]) -> list[tuple[int, str]]:
        calls = [
            client.get(f"/v1/sessions/{session_id}", headers=headers),
            client.post(f"/v1/sessions/{session_id}/generate", json=turn, headers=headers),
            client.post(
                "/v1/generate",
                json={"model": MODEL, **turn},
                headers={**headers, "X-Session-ID": session_id},
            ),
            client.delete(f"/v1/sessions/{session_id}", headers=headers),
        ]
        return [(r.status_code, r.text.replace(session_id, "ID")) for r in calls]

    theirs = answers(mine, OTHER)
    assert theirs == answers(unknown, OTHER)
    assert {status for status, _ in theirs} == {404}
    assert client.get(f"/v1/sessions/{mine}").status_code == 401  # no key: nothing at all
    assert client.get(f"/v1/sessions/{mine}", headers=AUTH).status_code == 200  # still there


# ---- (c) constant-time key comparison ----------------------------------------------------


def test_every_key_is_compared_in_constant_time_whatever_is_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compare = server.middleware.hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(server.middleware.hmac, "compare_digest", counting)
    counts = {}
    for label, header, status in (
        ("wrong key", "Bearer nope", 401),
        ("wrong key of a key's length", "Bearer " + "x" * len(KEYS[0]), 401),
        ("first key", FIRST, 200),
        ("last key", LAST, 200),
        ("no key", None, 401),
        ("another scheme", f"Basic {KEYS[0]}", 401),
    ):
        calls.clear()
        headers = {"Authorization": header} if header else {}
        assert client.get("/v1/models", headers=headers).status_code == status, label
        counts[label] = len(calls)
        assert {b for _, b in calls} == {k.encode() for k in KEYS}  # each key, every time
    assert set(counts.values()) == {len(KEYS)}, counts


# ---- (d) route walk ----------------------------------------------------------------------

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _is_public(path: str) -> bool:
    return path.startswith(("/health/", "/static/")) or path == "/"


def test_every_method_of_every_route_and_any_other_path_needs_a_key(client: TestClient) -> None:
    paths = {re.sub(r"\{[^}]+\}", "x", path) for path, _ in _flat(client.app.routes)}
    paths = {p + "/app.js" if p == "/static" else p for p in paths}
    assert {"/v1/generate", "/v1/sessions/x/generate", "/openapi.json", "/docs"} <= paths
    # Paths no route has, and dot segments (percent-encoded, so the client keeps them;
    # the server decodes them) that start like a public path.
    paths |= {"/v1/nope", "/admin", "/v1/models/", "/v2/generate", "/health/%2e%2e/v1/models",
              "/static/%2e%2e/%2e%2e/server/settings.py", "/health/live/%2e%2e/%2e%2e/metrics",
              "/%2e%2e/v1/models", "//v1/models"}  # fmt: skip
    walked = 0
    for path in sorted(paths):
        for method in METHODS:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "nope"}):
                response = client.request(method, path, headers=headers)
                status = response.status_code
                walked += 1
                if _is_public(path.replace("%2e", ".")):
                    # Public prefix: the page, the probes and static files, and for a dot
                    # path nothing at all (no route matches; StaticFiles refuses `..`).
                    assert status in (200, 404, 405, 503), (method, path, status)
                    if "%2e" in path:
                        assert status in (404, 405), (method, path, status)
                    continue
                assert status == 401, (method, path, headers, status)
                if method != "HEAD":
                    assert response.json()["error"]["type"] == "unauthorized"
    assert walked > 400
    print(f"\nFIGURE route walk: {walked} requests without a valid key, {len(paths)} paths")


# ---- (e) CORS ----------------------------------------------------------------------------


def test_cors_is_off_by_default(client: TestClient) -> None:
    evil = {"Origin": "https://evil.example"}
    preflight = {**evil, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    answers = [
        client.get("/v1/models", headers={**evil, **AUTH}),
        client.get("/health/live", headers=evil),
        client.post("/v1/generate", json={"model": MODEL, "prompt": "x"}, headers={**evil, **AUTH}),
        client.options("/v1/generate", headers=preflight),
        client.options("/v1/generate", headers={**preflight, **AUTH}),
        client.options("/health/ready", headers=preflight),
    ]
    assert [r.status_code for r in answers[:3]] == [200, 200, 200]
    for response in answers:
        leaked = [h for h in response.headers if h.lower().startswith("access-control-")]
        assert leaked == [], (response.request.method, response.request.url, leaked)
        assert response.status_code < 300 or response.request.method == "OPTIONS"


# ---- (f) errors leak no paths or stack traces --------------------------------------------

SECRET = f"kaboom at {ROOT}/server/secret_module.py line 42"


def _server_paths() -> list[str]:
    """Absolute paths of this server's files a message must never show."""
    return [str(ROOT), str(bundled_dir()), sys.prefix, str(Path.home()), "/work/"]


def assert_no_leak(text: str) -> None:
    for needle in ["Traceback", 'File "', "kaboom", "secret_module", *_server_paths()]:
        assert needle not in text, (needle, text)


def test_an_unexpected_exception_is_a_generic_500_and_logged(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(request: Any) -> Any:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(deps, "catalog", boom)
    caplog.set_level(logging.ERROR, logger="kvserve.errors")
    for method, path, body in (
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
        ("POST", "/v1/generate", {"model": MODEL, "prompt": "x"}),
        ("POST", "/v1/generate", {"model": MODEL, "prompt": "x", "stream": True}),
    ):
        request_id = f"probe-{len(caplog.records)}"
        headers = {**AUTH, "X-Request-ID": request_id}
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 500, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "internal_error" and error["param"] is None
        assert request_id in error["message"]  # what to quote to the operator
        assert_no_leak(response.text)
        # The operator's log has the whole story under that id.
        record = caplog.records[-1]
        assert request_id in record.getMessage() and record.exc_info is not None
        assert SECRET in str(record.exc_info[1])
    monkeypatch.undo()
    assert client.get("/v1/models", headers=AUTH).status_code == 200


def test_a_failure_inside_a_stream_ends_it_with_a_generic_error_event(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(server.outcomes, "done_fields", boom)  # fails at the last event
    caplog.set_level(logging.ERROR)
    body = {"model": MODEL, "prompt": "x", "max_new_tokens": 3, "stream": True}
    response = client.post("/v1/generate", json=body, headers={**AUTH, "X-Request-ID": "mid"})
    assert response.status_code == 200
    last = response.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\n"), response.text
    assert '"type":"internal_error"' in last and "mid" in last
    assert_no_leak(response.text)
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records)


def test_a_worker_side_exception_reaches_the_client_without_its_text() -> None:
    """A worker reports an unexpected exception as an `internal_error` event carrying the
    exception's text; the client gets a 500 without it (the log keeps it)."""
    error = error_from_event(("error", "req_1", INTERNAL, f"FileNotFoundError: {SECRET}"))
    assert (error.status, error.error_type) == (500, "internal_error")
    assert_no_leak(error.message)
    # Errors meant for the client keep their words.
    died = error_from_event(("error", "req_1", WORKER_DIED, "worker 0 stopped; retry"))
    assert (died.status, died.message) == (503, "worker 0 stopped; retry")


HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "C:\\Windows",
                 f"{bundled_dir()}/{MODEL}", "~/.ssh/id_rsa", "text-lm-draft/../text-lm",
                 "\u202etext-lm", "a" * 300]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_4xx_for_path_like_inputs_never_show_a_server_path(client: TestClient, name: str) -> None:
    prompt = {"prompt": "x", "max_new_tokens": 2}
    answers = [
        client.post("/v1/generate", json={"model": name, **prompt}, headers=AUTH),
        client.post("/v1/sessions", json={"model": name}, headers=AUTH),
        client.post(
            "/v1/speculative", json={"model": MODEL, "draft_model": name, **prompt}, headers=AUTH
        ),
        client.post("/v1/completions", json={"model": name, "prompt": "x"}, headers=AUTH),
        client.get(f"/v1/models/{name}", headers=AUTH),
        client.get(f"/v1/sessions/{name}", headers=AUTH),
        client.post(f"/v1/sessions/{name}/generate", json=prompt, headers=AUTH),
    ]
    if name.isascii():  # a header is latin-1
        header = {**AUTH, "X-Session-ID": name}
        answers.append(client.post("/v1/generate", json={"model": MODEL, **prompt}, headers=header))
    for response in answers:
        assert 400 <= response.status_code < 500, (response.request.url, response.text)
        assert set(response.json()["error"]) == {"type", "message", "param"}
        text = response.text.replace(name, "NAME").replace(json_escaped(name), "NAME")
        for path in _server_paths():
            assert path not in text, (response.request.url, response.text)


def json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]
