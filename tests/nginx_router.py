"""Debian's nginx on loopback, running docker/nginx.conf (the compose router) with the
replicas' addresses put in for `replica1:8000` / `replica2:8000`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port, wait_for_port

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
    port = free_port()
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
            wait_for_port(port, process, "nginx")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)
