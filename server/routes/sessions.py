"""Sessions: a conversation's history kept by the server, its KV cache kept by a worker.

POST /v1/sessions opens one; POST /v1/sessions/{id}/generate appends input and continues
from the cache; GET shows it; DELETE closes it. Every answer carries `X-Session-ID` (so an
L7 router can hash on it), and POST /v1/generate with an `X-Session-ID` header continues
that session.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.catalog import ServedModel, find_model
from server.engine.engine import SessionBusy, SessionNotFound
from server.errors import ApiError
from server.inputs import check_lengths, model_input, stop_tokens
from server.openapi_doc import NATIVE_STREAM, errors
from server.outcomes import answer, submit_session
from server.routes import deps
from server.schemas import (
    GenerateResponse,
    OpenSessionRequest,
    SessionDeleted,
    SessionGenerateRequest,
    SessionInfo,
)
from server.sessions import Session, SessionLimitError

router = APIRouter(tags=["sessions"])
HEADER = "X-Session-ID"
WITH_HEADER = {
    "headers": {
        HEADER: {"description": "the session's id", "required": True, "schema": {"type": "string"}}
    }
}


def _not_found(session_id: str) -> ApiError:
    return ApiError(
        404,
        "session_not_found",
        f"session {session_id!r} does not exist, has expired, or belongs to another key; "
        "open one with POST /v1/sessions",
        "session_id",
    )


def _info(session: Session, request: Request) -> dict[str, object]:
    engine = deps.engine(request)
    worker = engine.pool.affinity.get(session.id)
    return SessionInfo(
        session_id=session.id,
        model=session.model,
        length=len(session.history),
        created_at=session.created_at,
        expires_at=session.expires_at,
        busy=session.busy,
        cache={"worker": worker},
    ).model_dump()


@router.post(
    "/v1/sessions",
    status_code=201,
    response_model=SessionInfo,
    responses={**errors(404, 409, 429), 201: WITH_HEADER},
    summary="Open a session on an autoregressive model",
)
async def open_session(body: OpenSessionRequest, request: Request) -> Response:
    served = find_model(deps.catalog(request), body.model, "autoregressive")
    try:
        session = await deps.engine(request).open_session(
            served.name, deps.owner(request), body.ttl_s
        )
    except SessionLimitError as exc:
        raise ApiError(429, "too_many_sessions", str(exc), headers={"Retry-After": "60"}) from exc
    return JSONResponse(_info(session, request), 201, headers={HEADER: session.id})


async def _get(session_id: str, request: Request) -> Session:
    session = await deps.engine(request).store.get(session_id, deps.owner(request))
    if session is None:
        raise _not_found(session_id)
    return session


@router.get(
    "/v1/sessions/{session_id}",
    response_model=SessionInfo,
    responses={**errors(404), 200: WITH_HEADER},
    summary="A session",
)
async def get_session(session_id: str, request: Request) -> Response:
    session = await _get(session_id, request)
    return JSONResponse(_info(session, request), headers={HEADER: session.id})


@router.delete(
    "/v1/sessions/{session_id}",
    response_model=SessionDeleted,
    responses={**errors(404), 200: WITH_HEADER},
    summary="Close a session and free its cache",
)
async def close_session(session_id: str, request: Request) -> Response:
    if not await deps.engine(request).close_session(session_id, deps.owner(request)):
        raise _not_found(session_id)
    return JSONResponse({"session_id": session_id, "deleted": True}, headers={HEADER: session_id})


@router.post(
    "/v1/sessions/{session_id}/generate",
    response_model=GenerateResponse,
    responses={**errors(404, 409, 422, 429, 503, 504), 200: {**NATIVE_STREAM[200], **WITH_HEADER}},
    summary="Append input to a session and continue it from its cache",
)
async def session_generate(
    session_id: str, body: SessionGenerateRequest, request: Request
) -> Response:
    return await continue_session(session_id, body, request)


async def continue_session(
    session_id: str, body: SessionGenerateRequest, request: Request, model: str | None = None
) -> Response:
    session = await _get(session_id, request)
    if model is not None and model != session.model:
        raise ApiError(
            409,
            "wrong_model_kind",
            f"session {session_id} is on {session.model!r}, not {model!r}",
            "model",
        )
    served: ServedModel = find_model(deps.catalog(request), session.model, "autoregressive")
    items = model_input(served, body)
    total = len(session.history) + len(items)
    check_lengths(served, total, body, deps.settings(request).max_new_tokens)
    options = {
        "max_new_tokens": body.max_new_tokens,
        "temperature": body.temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": stop_tokens(served, body),
    }
    try:
        stream = await submit_session(
            deps.engine(request), session_id, items, deps.owner(request), options
        )
    except SessionNotFound as exc:
        raise _not_found(session_id) from exc
    except SessionBusy as exc:
        raise ApiError(409, "session_busy", f"{exc}; wait for it to finish", "session_id") from exc
    return await answer(
        request, stream, served, body.stream, {"session_id": session_id}, {HEADER: session_id}
    )
