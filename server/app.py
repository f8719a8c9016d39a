"""The FastAPI application: routes, error handlers, middleware, and the engine's life
cycle (started when the app starts, stopped when it stops)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server.access_log import AccessLogMiddleware, configure_logging
from server.catalog import build_catalog
from server.engine.engine import Engine
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    DrainMiddleware,
    ReplicaHeaderMiddleware,
)
from server.openapi_doc import install_openapi
from server.redis_sessions import make_store
from server.routes import completions, generate, health, models, predict, sessions
from server.settings import ServerSettings

log = logging.getLogger("kvserve")
STATIC = Path(__file__).parent / "static"
VERSION = "0.1.0"


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = make_store(
            settings.session_store, settings.max_sessions, settings.max_sessions_per_key
        )
        engine = Engine(settings.engine_settings(), store=store)
        app.state.engine = engine
        await engine.start()
        failed = engine.pool.load_errors()
        for name, why in {**engine.scan_errors, **failed}.items():
            log.error("model %s is not served: %s", name, why)
        served = {n: e for n, e in engine.models.items() if n not in failed}
        app.state.catalog = build_catalog(served, settings, sorted(set(settings.devices)))
        app.state.started = True
        log.info("serving %s", ", ".join(sorted(served)) or "no model")
        try:
            yield
        finally:
            app.state.started = False
            await engine.stop()
            if hasattr(store, "close"):
                await store.close()

    app = FastAPI(
        title="kvserve",
        version=VERSION,
        summary="PyTorch transformer inference: predictions, streamed generation, "
        "sessions with KV caches, speculative decoding",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.draining = False
    app.state.started = False
    app.state.active_requests = 0
    app.state.catalog = {}
    install_error_handlers(app)
    install_openapi(app, keys=bool(settings.key_values()))
    for module in (health, models, predict, generate, sessions, completions):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def playground(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Added innermost first: the access log sees every request, the body limit last.
    app.add_middleware(
        BodyLimitMiddleware, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(AuthMiddleware, keys=settings.key_values())
    app.add_middleware(DrainMiddleware, state=lambda: app.state)
    app.add_middleware(ReplicaHeaderMiddleware, name=settings.replica_name or socket.gethostname())
    app.add_middleware(AccessLogMiddleware, log_format=settings.log_format)
    configure_logging(settings.log_format, settings.log_level)
    return app
