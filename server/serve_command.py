"""`kvserve serve` and `kvserve models`: flags built from ServerSettings, uvicorn with a
draining shutdown.

SIGTERM: readiness turns 503 and new requests get 503 at once, running streams finish
(up to `drain_timeout_s`), then the server stops its workers and exits 0. A second
SIGTERM, or SIGINT (Ctrl-C), stops at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from pydantic import ValidationError

log = logging.getLogger("kvserve")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerSettings field; unset flags leave the field to KVSERVE_* or its
    default."""
    from server.settings import ServerSettings

    for name, field in ServerSettings.model_fields.items():
        value = field.default
        shown = ",".join(value) if isinstance(value, list) else value
        default = "" if value in (None, []) else f", default {shown}"
        env = f"KVSERVE_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar=_metavar(name, field.annotation),
            help=f"{field.description} (env {env}{default})",
        )


def _metavar(name: str, annotation: Any) -> str:
    text = str(annotation)
    if name.endswith("_s"):
        return "SECONDS"
    if "list" in text:
        return "A,B"
    if "int" in text:
        return "N"
    if "Path" in text:
        return "DIR"
    return "VALUE"


def settings_from(args: argparse.Namespace) -> Any:
    from server.settings import ServerSettings

    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    return ServerSettings(**given)


def _bad_settings(exc: ValidationError) -> int:
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        print(
            f"kvserve serve: --{field.replace('_', '-')}: {error['msg']} "
            f"(also settable as KVSERVE_{field.upper()})",
            file=sys.stderr,
        )
    return 2


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.access_log import configure_logging
    from server.app import create_app
    from server.connection_guard import guarded_protocol
    from server.model_repository import ModelRepository

    try:
        settings = settings_from(args)
    except ValidationError as exc:
        return _bad_settings(exc)
    configure_logging(settings.log_format, settings.log_level)
    try:
        scan = ModelRepository(settings.model_dir).scan()
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"kvserve serve: {exc}", file=sys.stderr)
        return 2
    if not scan.entries:
        print(
            f"kvserve serve: no loadable model in {settings.model_dir}: {scan.errors}",
            file=sys.stderr,
        )
        return 2
    warning = exposure_warning(settings)
    if warning:
        log.warning(warning)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # httptools, with timeouts for slow requests and for clients that stop reading
        http=guarded_protocol(settings.body_timeout_s, settings.stream_send_timeout_s),
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, app.state, settings.drain_timeout_s)
    server.run()
    return 0


def exposure_warning(settings: Any) -> str | None:
    """A warning when the server listens beyond loopback without API keys."""
    if settings.api_keys or settings.host in LOOPBACK:
        return None
    return (
        f"listening on {settings.host} without API keys: anyone who can reach this address "
        "can use the server (set KVSERVE_API_KEYS)"
    )


class DrainingServer:
    """uvicorn's Server whose SIGTERM drains first (see the module docstring)."""

    def __new__(cls, config: Any, state: Any, drain_timeout_s: float) -> Any:
        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if sig == signal.SIGTERM and not state.draining:
                    state.draining = True
                    log.info("SIGTERM: draining (up to %.0f s), then exiting", drain_timeout_s)
                    threading.Thread(target=self._drain, daemon=True).start()
                    return
                super().handle_exit(sig, frame)

            def _drain(self) -> None:
                deadline = time.monotonic() + drain_timeout_s
                while state.active_requests > 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                if state.active_requests:
                    log.warning("drain timeout: %d request(s) cut off", state.active_requests)
                self.should_exit = True

        return _Server(config)


def models_command(args: argparse.Namespace) -> int:
    """List what a model directory holds and whether each checkpoint is valid."""
    from server.model_repository import ModelRepository

    try:
        scan = ModelRepository(args.model_dir).scan()
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"kvserve models: {exc}", file=sys.stderr)
        return 2
    rows = [
        {"name": name, "status": "ok", **_summary(entry.describe())}
        for name, entry in scan.entries.items()
    ]
    rows += [{"name": name, "status": f"error: {why}"} for name, why in scan.errors.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        columns = ["name", "kind", "input_form", "parameters", "max_seq_len", "status"]
        table = [[str(row.get(c, "")) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for r in table:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 1 if scan.errors else 0


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info.get(k) for k in ("kind", "input_form", "parameters", "max_seq_len")}
