"""The API's error object and the handlers that turn every failure into it.

Every error is `{"error": {"type": ..., "message": ..., "param": ...}}` with its status.
Validation errors name the offending field; an unexpected exception is a 500 with a
request id to quote, never a stack trace (the trace goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("kvserve.errors")

STATUS_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "wrong_model_kind",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message, self.param)


def error_body(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, "param": param}}


def error_response(
    status: int,
    error_type: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(error_type, message, param), status, headers=headers)


SKIPPED_LOC = {"body", "query", "path", "header"}
TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


def _is_type_tag(part: Any) -> bool:
    """Union members pydantic names in an error's location: `list[int]`, `str`, ..."""
    return isinstance(part, str) and ("[" in part or part in TYPE_TAGS)


def _field_path(loc: tuple[Any, ...]) -> str:
    """`("body", "input", "list[int]", 0)` -> `input.0` (pydantic names the union member
    it tried; the client only needs the field)."""
    parts = [str(p) for p in loc if p not in SKIPPED_LOC and not _is_type_tag(p)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        param = _field_path(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return error_response(422, "invalid_request", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = STATUS_TYPES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs"
        return error_response(exc.status_code, error_type, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error (request %s)", request_id)
        return error_response(500, "internal_error", internal_error_message(request_id))


def internal_error_message(request_id: str | None) -> str:
    """What a client is told about an unexpected failure: the request id to quote, never
    the exception, its text or a path (those go to the log under that id)."""
    return f"the server failed on this request (request id {request_id}); it is logged"
