"""Debian's nginx on loopback, running docker/nginx.conf (the compose router) with the
replicas' addresses put in for `replica1:8000` / `replica2:8000`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ROUTER_CONF = Path(__file__).resolve().parents[1] / "docker" / "nginx.conf"


def router_config(replicas: list[str], port: int, workdir: Path) -> str:
    """The compose router's http-level config, templated for loopback, in a whole
    nginx.conf that runs unprivileged from `workdir`."""
    conf = ROUTER_CONF.read_text()
    for i, address in enumerate(replicas, start=1):
        conf = conf.replace(f"server replica{i}:8000", f"server {address}")
    conf = re.sub(r"listen \d+;", f"listen 127.0.0.1:{port};", conf)
    conf = conf.replace("access_log /dev/stdout", f"access_log {workdir}/access.log")
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n{temp}\n{conf}\n}}\n"
    )


@contextlib.contextmanager
def nginx_router(replicas: list[str]) -> Iterator[str]:
    """nginx in front of `replicas` ("127.0.0.1:PORT"); yields its base URL."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="kvserve-nginx-") as tmp:
        workdir = Path(tmp)
        config = workdir / "nginx.conf"
        config.write_text(router_config(replicas, port, workdir))
        process = subprocess.Popen(
            [NGINX, "-c", str(config), "-p", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"nginx failed: {process.stderr.read().decode()}")
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)
