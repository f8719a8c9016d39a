"""What /openapi.json declares beyond what FastAPI derives from the routes, so that it
states every answer the API really gives (schemathesis holds the server to it:
tests/test_fuzz_schema.py).

- Every error is the API's error object (`ErrorResponse`), FastAPI's own 422 body
  (HTTPValidationError) included: we answer validation errors with our object.
- Streams declare their Server-Sent Events one by one (`itemSchema`): `event: token` /
  `done` / `error` for the native routes, OpenAI's `data: {chunk}` then `data: [DONE]`
  for /v1/completions.
- Routes declare what they answer themselves, with `errors(...)` and `NATIVE_STREAM` /
  `COMPLETION_STREAM`. `install_openapi` adds in one place what the middleware and
  FastAPI's body reading answer on every route they cover, by the middleware's own
  rules, so that a new route cannot forget them: 400 (a body that is not UTF-8), 408 and
  413 (the body's time and size limits) and 422 where a body is read; when the server has
  API keys, the bearer scheme and 401 (no or a wrong key) on all but the public routes;
  503 (draining) on all but /health/*.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.middleware import EXEMPT_PREFIX, public_without_key
from server.openai_schemas import CompletionResponse
from server.schemas import ErrorResponse, StreamDone, TokenEvent

REF = "#/components/schemas/{model}"
FASTAPI_422 = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": REF.format(model="HTTPValidationError")}}},
}
# Models that only the documents below name (FastAPI registers the routes' own).
DOCUMENTED_MODELS: list[type[BaseModel]] = [ErrorResponse, TokenEvent, StreamDone]

DESCRIPTIONS = {
    400: "the body could not be read (it is not UTF-8 text)",
    401: "no API key, or a wrong one (when the server has keys)",
    404: "no such model, session or route",
    408: "the body did not arrive within body_timeout_s",
    409: "the model is of the wrong kind for this route, or the session is busy",
    413: "the body is over max_body_bytes",
    422: "a field is invalid (`param` names it), or the model cannot take the input",
    429: "overloaded, or too many open sessions: retry after Retry-After seconds",
    503: "no worker can take the request now (restarting), or the server is draining: "
    "retry after Retry-After seconds",
    504: "the request passed its deadline",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the errors a route answers with itself."""
    return {code: _error_doc(code) for code in codes}


def _error_doc(code: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorResponse, "description": DESCRIPTIONS[code]}
    if code in HEADERS:
        doc["headers"] = HEADERS[code]
    return doc


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json_data(schema: dict[str, Any]) -> dict[str, Any]:
    """An SSE `data` field that holds JSON matching `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _native_event(name: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "if": {"properties": {"event": {"const": name}}, "required": ["event"]},
        "then": {"properties": {"data": _json_data(_ref(model))}},
    }


NATIVE_STREAM = {
    200: {
        "description": "JSON, or with `stream: true` Server-Sent Events: `event: token` "
        "per output, then `event: done` (or `event: error` with the error object)",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {"event": {"enum": ["token", "done", "error"]}},
                    "allOf": [
                        _native_event("token", TokenEvent),
                        _native_event("done", StreamDone),
                        _native_event("error", ErrorResponse),
                    ],
                }
            }
        },
    }
}
COMPLETION_STREAM = {
    200: {
        "description": "JSON, or with `stream: true` Server-Sent Events: `data: {chunk}` "
        "per piece of text (or the error object), then `data: [DONE]`",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "required": ["data"],
                    # No `event:` line: the event is a "message" (the SSE standard's default).
                    "properties": {"event": {"const": "message"}},
                    "if": {"properties": {"data": {"const": "[DONE]"}}},
                    "else": {
                        "properties": {
                            "data": _json_data(
                                {"anyOf": [_ref(CompletionResponse), _ref(ErrorResponse)]}
                            )
                        }
                    },
                }
            }
        },
    }
}


def install_openapi(app: FastAPI, keys: bool) -> None:
    """Make `app.openapi()` (and so /openapi.json and /docs) add the middleware's answers
    to what FastAPI derives from the routes; `keys`: the server has API keys."""
    derive = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_middleware_answers(derive(), keys)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_middleware_answers(document: dict[str, Any], keys: bool) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    if keys:
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            codes: list[int] = []
            if "requestBody" in operation:
                codes += [400, 408, 413, 422]
            if "422" in responses:  # FastAPI's own HTTPValidationError: ours instead
                codes.append(422)
            if keys and not public_without_key(path):
                operation["security"] = [{"apiKey": []}]
                codes.append(401)
            if not path.startswith(EXEMPT_PREFIX):
                codes.append(503)
            for code in codes:
                _declare(responses, code)
            operation["responses"] = dict(sorted(responses.items()))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _, defined = models_json_schema(
        [(model, "serialization") for model in DOCUMENTED_MODELS], ref_template=REF
    )
    for name, schema in defined.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    return document


def _declare(responses: dict[str, Any], code: int) -> None:
    """Our error object for `code`; a route's own entry for it stays (FastAPI's 422 is
    replaced)."""
    current = responses.get(str(code))
    if current is not None and current != FASTAPI_422:
        return
    doc = {
        "description": DESCRIPTIONS[code],
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
    }
    if code in HEADERS:
        doc["headers"] = HEADERS[code]
    responses[str(code)] = doc
