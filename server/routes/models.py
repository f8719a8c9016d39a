"""What is loaded: GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.catalog import find_model
from server.openapi_doc import errors
from server.routes import deps
from server.schemas import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, summary="Every loaded model")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[m.card for m in deps.catalog(request).values()])


@router.get(
    "/v1/models/{model_id}", response_model=ModelCard, responses=errors(404), summary="One model"
)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return find_model(deps.catalog(request), model_id, param="model_id").card
