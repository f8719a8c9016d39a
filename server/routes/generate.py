"""POST /v1/generate, /v1/speculative, /v1/seq2seq."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from server.catalog import find_model
from server.engine.engine import new_request_id
from server.engine.protocol import Sampling, WorkRequest
from server.errors import ApiError
from server.inputs import check_items, check_lengths, invalid, model_input, stop_tokens
from server.openapi_doc import NATIVE_STREAM, errors
from server.outcomes import answer, submit
from server.routes import deps, sessions
from server.schemas import (
    GenerateRequest,
    GenerateResponse,
    SamplingFields,
    Seq2SeqRequest,
    SessionGenerateRequest,
    SpeculativeRequest,
)

router = APIRouter(tags=["inference"])
RESPONSES = {**errors(404, 409, 422, 429, 503, 504), **NATIVE_STREAM}
SessionHeader = Annotated[
    str | None,
    Header(alias=sessions.HEADER, description="continue this session (as its generate route)"),
]


def sampling(body: SamplingFields) -> Sampling:
    return Sampling(body.temperature, body.top_k, body.top_p, body.seed)


@router.post(
    "/v1/generate",
    response_model=GenerateResponse,
    responses=RESPONSES,
    summary="Continue a token or value sequence (autoregressive models)",
)
async def generate(
    body: GenerateRequest, request: Request, session_id: SessionHeader = None
) -> Response:
    if session_id:  # continue that session (an L7 router can hash on the header)
        fields = body.model_dump(exclude={"model"}, exclude_unset=True)
        return await sessions.continue_session(
            session_id, SessionGenerateRequest(**fields), request, model=body.model
        )
    served = find_model(deps.catalog(request), body.model, "autoregressive")
    items = model_input(served, body)
    check_lengths(served, len(items), body, deps.settings(request).max_new_tokens)
    req = WorkRequest(
        new_request_id(), "generate", served.name, items, body.max_new_tokens,
        sampling(body), stop_tokens(served, body),
    )  # fmt: skip
    return await answer(request, submit(deps.engine(request), req), served, body.stream)


@router.post(
    "/v1/speculative",
    response_model=GenerateResponse,
    responses=RESPONSES,
    summary="Generate with a draft model proposing and the target verifying",
)
async def speculative(body: SpeculativeRequest, request: Request) -> Response:
    catalog = deps.catalog(request)
    served = find_model(catalog, body.model, "autoregressive")
    draft = find_model(catalog, body.draft_model, "autoregressive", param="draft_model")
    if not served.uses_tokens or served.config.vocab_size != draft.config.vocab_size:
        raise_mismatch(served.config.vocab_size, draft.config.vocab_size)
    items = model_input(served, body)
    limit = deps.settings(request).max_new_tokens
    check_lengths(served, len(items), body, limit)
    check_lengths(draft, len(items), body, limit)
    req = WorkRequest(
        new_request_id(), "speculative", served.name, items, body.max_new_tokens,
        sampling(body), stop_tokens(served, body),
        draft_model=draft.name, draft_steps=body.draft_steps,
    )  # fmt: skip
    return await answer(request, submit(deps.engine(request), req), served, body.stream)


def raise_mismatch(target_vocab: int | None, draft_vocab: int | None) -> None:
    raise ApiError(
        409,
        "wrong_model_kind",
        f"speculative decoding needs token models sharing a vocabulary; the target's "
        f"vocab_size is {target_vocab}, the draft's {draft_vocab}",
        "draft_model",
    )


@router.post(
    "/v1/seq2seq",
    response_model=GenerateResponse,
    responses=RESPONSES,
    summary="Decode a target from a source (encoder-decoder models)",
)
async def seq2seq(body: Seq2SeqRequest, request: Request) -> Response:
    served = find_model(deps.catalog(request), body.model, "encoder_decoder")
    source = model_input(served, body)
    width = served.source_pad_to or served.config.max_seq_len
    if len(source) > width:
        raise invalid("input", f"{len(source)} items is over the model's source limit ({width})")
    if served.source_pad_to:  # the model reads fixed-width sources (its card says so)
        source = source + [served.special_tokens["pad"]] * (width - len(source))
    start = body.start
    if start is None:
        bos = served.special_tokens.get("bos")
        if bos is None:
            raise invalid("start", f"{served.name!r} has no BOS token in its card: give `start`")
        start = [bos]
    check_items(served, start, "start")
    check_lengths(served, len(start), body, deps.settings(request).max_new_tokens)
    req = WorkRequest(
        new_request_id(), "seq2seq", served.name, source, body.max_new_tokens,
        sampling(body), stop_tokens(served, body), start=list(start),
    )  # fmt: skip
    return await answer(request, submit(deps.engine(request), req), served, body.stream)
