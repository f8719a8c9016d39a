"""What route handlers take from the app: the engine, the model catalog, the settings,
the caller's identity."""

from __future__ import annotations

from fastapi import Request

from server.catalog import ServedModel
from server.engine.engine import Engine
from server.metrics import Metrics, StreamTimer
from server.settings import ServerSettings


def engine(request: Request) -> Engine:
    return request.app.state.engine


def catalog(request: Request) -> dict[str, ServedModel]:
    return request.app.state.catalog


def settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def owner(request: Request) -> str | None:
    """The caller's owner id (from its API key), None without auth."""
    return getattr(request.state, "owner", None)


def timer(request: Request, model: str) -> StreamTimer:
    request.state.model = model  # for the access log
    metrics: Metrics = request.app.state.metrics
    return StreamTimer(metrics, model)
