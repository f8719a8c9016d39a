"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from server.errors import error_response
from server.schemas import ErrorResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="Models loaded, workers up, not draining",
    responses={503: {"model": ErrorResponse, "description": "not ready, or draining"}},
)
async def ready(request: Request) -> Response:
    state = request.app.state
    engine = getattr(state, "engine", None)
    if getattr(state, "draining", False):
        return error_response(503, "unavailable", "draining: the server is shutting down")
    if engine is None or not getattr(state, "started", False) or not engine.ready:
        return error_response(503, "unavailable", "not ready: workers are starting or restarting")
    return Response('{"status":"ready"}', media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["metrics"],
    response_class=PlainTextResponse,  # the text exposition format
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "engine", None) is not None:
        state.metrics.set_engine_stats(state.engine.stats()["workers"])
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
