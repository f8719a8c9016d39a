"""Loopback ports for the real services tests start (kvserve, redis-server, nginx)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], name: str, timeout_s: float = 10.0
) -> None:
    """Return once `port` accepts connections; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{name} exited with {process.returncode}: {err}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not listen on port {port} in {timeout_s:.0f} s")
        time.sleep(0.05)
