"""POST /v1/predict: regression over a batch of value sequences."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.catalog import find_model
from server.engine.engine import new_request_id
from server.engine.protocol import WorkRequest
from server.inputs import check_items, invalid
from server.openapi_doc import errors
from server.outcomes import error_from_event, submit
from server.routes import deps
from server.schemas import PredictRequest, PredictResponse

router = APIRouter(tags=["inference"])


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=errors(404, 409, 422, 429, 503, 504),
    summary="Regression: one output vector per input sequence",
)
async def predict(body: PredictRequest, request: Request) -> Response:
    served = find_model(deps.catalog(request), body.model, "regression")
    limit = deps.settings(request).max_batch_size
    if len(body.inputs) > limit:
        raise invalid("inputs", f"{len(body.inputs)} sequences is over the limit of {limit}")
    for i, sequence in enumerate(body.inputs):
        if not sequence:
            raise invalid(f"inputs.{i}", "the sequence is empty")
        if len(sequence) > served.config.max_seq_len:
            raise invalid(
                f"inputs.{i}",
                f"{len(sequence)} steps is over max_seq_len ({served.config.max_seq_len})",
            )
        check_items(served, sequence, f"inputs.{i}")
    req = WorkRequest(new_request_id(), "predict", served.name, body.inputs)
    stream = submit(deps.engine(request), req)
    timer = deps.timer(request, served.name)  # after submission: a refusal is not waiting
    async for event in stream:
        if event[0] == "error":
            timer.on_end(None, event[2], None)
            raise error_from_event(event)
        if event[0] == "done":
            timer.on_output()
            timer.on_end(event[2], None, event[3])
            usage = event[3]
            return JSONResponse(
                {"id": req.id, "model": served.name, "outputs": event[4]["outputs"], "usage": usage}
            )
    raise AssertionError("a stream ends with done or error")
