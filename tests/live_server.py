"""A real kvserve server in a child process, for tests that talk HTTP to it (a browser,
a load test, a client) rather than to the app in-process.

    with live_server(["text-lm"]) as server:
        urllib.request.urlopen(server.url + "/v1/models")

The child gets its settings the way `kvserve serve` does (`--flag value` or the
`KVSERVE_*` environment), is ready when GET /health/ready answers 200, and is stopped
with SIGTERM (SIGKILL to its process group after `STOP_TIMEOUT_S`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
ROOT = Path(__file__).resolve().parent.parent

# Until `kvserve serve` lands: uvicorn on the app, every setting from KVSERVE_* (which is
# what `serve` reads too, so flags translate one to one into the environment).
_UVICORN = (
    "import uvicorn; from server.app import create_app; from server.settings import "
    "ServerSettings; s = ServerSettings(); "
    "uvicorn.run(create_app(s), host=s.host, port=s.port, log_config=None)"
)


def uvicorn_command(flags: list[str]) -> tuple[list[str], dict[str, str]]:
    """The stand-in for `kvserve serve`: the same flags, passed as KVSERVE_* variables."""
    return [sys.executable, "-c", _UVICORN], flags_as_env(flags)


def kvserve_command(flags: list[str]) -> tuple[list[str], dict[str, str]]:
    """The real CLI."""
    return [str(Path(sys.executable).with_name("kvserve")), "serve", *flags], {}


# Tests run the real command users run (uvicorn_command is kept for debugging the app
# without the CLI).
SERVE_COMMAND = kvserve_command


def flags_as_env(flags: list[str]) -> dict[str, str]:
    """`["--max-new-tokens", "8", "--models=a,b"]` -> KVSERVE_MAX_NEW_TOKENS=8,
    KVSERVE_MODELS=a,b."""
    env: dict[str, str] = {}
    items = iter(flags)
    for flag in items:
        if not flag.startswith("--"):
            raise ValueError(f"expected a --flag, got {flag!r} in {flags}")
        name, eq, value = flag[2:].partition("=")
        if not eq:
            value = next(items, None)
            if value is None:
                raise ValueError(f"{flag} has no value")
        env["KVSERVE_" + name.replace("-", "_").upper()] = value
    return env


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(server: LiveServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {server.process.returncode} before it was ready:\n"
                f"{server.log()[-4000:]}"
            )
        if _ready(server.url):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the server was not ready in {timeout_s:.0f} s:\n{server.log()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # The server and its worker processes share the group started for it.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT_S)


@contextmanager
def live_server(
    models: list[str] | None = None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[LiveServer]:
    """A `kvserve serve` on a free port, serving `models` (default: all the demos), with
    extra `env` variables and `args` flags; stopped on exit."""
    port = free_port()
    flags = ["--host", HOST, "--port", str(port)]
    if models:
        flags += ["--models", ",".join(models)]
    command, flag_env = SERVE_COMMAND([*flags, *(args or [])])
    child_env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",  # idle workers must not spin on shared cores
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
        **flag_env,
    }
    with tempfile.TemporaryDirectory(prefix="kvserve-live-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = LiveServer(f"http://{HOST}:{port}", process, log_path)
        try:
            _wait_ready(server, ready_timeout_s)
            yield server
        finally:
            _stop(process)
