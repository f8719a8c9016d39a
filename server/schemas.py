"""Request and response bodies of the native API (pydantic), with examples that work
against the bundled demo models (they appear in /openapi.json and /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

TokenIds = list[int]
Values = list[list[FiniteFloat]]


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    # strict: "16" or true for a number is a 422, as the schema says, not a coercion.
    return ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": list(examples)})


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_new_tokens: int = Field(16, ge=1, description="outputs to generate (at most the limit)")
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0 = greedy")
    top_k: int | None = Field(None, ge=1, description="sample from the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling mass")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="reproducible sampling")
    stop: list[int] | None = Field(
        None, description="token ids that end generation (default: the model's EOS if it has one)"
    )
    stream: bool = Field(False, description="Server-Sent Events: token events, then done")


class InputFields(BaseModel):
    input: TokenIds | Values | None = Field(
        None, description="token ids, or value vectors [[x, ...], ...] for value models"
    )
    prompt: str | None = Field(None, description="text, for byte-level token models")


class GenerateRequest(SamplingFields, InputFields):
    model_config = _examples(
        {"model": "text-lm", "prompt": "def fibonacci(n):", "max_new_tokens": 32},
        {"model": "sine-forecaster", "input": [[0.0], [0.31], [0.59], [0.81]], "max_new_tokens": 8},
    )
    model: str


class SpeculativeRequest(GenerateRequest):
    model_config = _examples(
        {
            "model": "text-lm",
            "draft_model": "text-lm-draft",
            "draft_steps": 4,
            "prompt": "import os\n",
            "max_new_tokens": 32,
        }
    )
    draft_model: str
    draft_steps: int = Field(4, ge=1, le=16, description="tokens the draft proposes per round")


class Seq2SeqRequest(SamplingFields, InputFields):
    model_config = _examples(
        {"model": "digits-seq2seq", "input": [1, 2, 3, 4], "max_new_tokens": 40},
    )
    model: str
    start: TokenIds | None = Field(None, description="decoder start tokens (default: the BOS)")


class PredictRequest(BaseModel):
    model_config = _examples(
        {"model": "sine-regressor", "inputs": [[[0.0], [0.7], [1.0], [0.7], [0.0], [-0.7]] * 4]},
    )
    model: str
    inputs: list[Values] = Field(
        min_length=1, description="a batch of value sequences (lengths may differ)"
    )


class OpenSessionRequest(BaseModel):
    model_config = _examples({"model": "text-lm", "ttl_s": 600})
    model: str
    ttl_s: float | None = Field(None, gt=0, le=7 * 86400, description="idle time to live")


class SessionGenerateRequest(SamplingFields, InputFields):
    model_config = _examples({"prompt": "class Stack:\n", "max_new_tokens": 24})


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class SpeculativeStats(BaseModel):
    rounds: int
    proposed: int
    accepted: int
    rejected: int
    acceptance_rate: float
    alpha: float


class GenerateResponse(BaseModel):
    id: str
    model: str
    outputs: TokenIds | list[list[float]]
    text: str | None = None
    finish_reason: str
    usage: Usage
    speculative: SpeculativeStats | None = None
    session_id: str | None = None


class TokenEvent(BaseModel):
    """The data of a stream's `event: token`: one output, a token id (with its decoded
    text for byte-level models) or a value vector."""

    model_config = ConfigDict(extra="forbid")

    index: int
    token: int | None = None
    text: str | None = None
    value: list[float] | None = None


class StreamDone(BaseModel):
    """The data of a stream's last `event: done` (the outputs came as token events)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    finish_reason: str
    usage: Usage
    speculative: SpeculativeStats | None = None
    session_id: str | None = None


class PredictResponse(BaseModel):
    id: str
    model: str
    outputs: list[list[float]]
    usage: Usage


class Limits(BaseModel):
    max_seq_len: int
    max_new_tokens: int
    max_batch_size: int
    max_body_bytes: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    kind: str
    input_form: str
    input_dim: int | None = None
    output_dim: int | None = None
    vocab_size: int | None = None
    tokenizer: str | None = None
    attention_type: str
    num_groups: int | None = None
    num_layers: int
    embed_dim: int
    num_heads: int
    max_seq_len: int
    window: int | None = None
    parameters: int
    moe: dict[str, Any] | None = None
    devices: list[str]
    limits: Limits
    special_tokens: dict[str, int] | None = None
    source_pad_to: int | None = Field(
        None, description="seq2seq: sources are padded to this width with the PAD token"
    )
    task: str | None = None
    metrics: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SessionInfo(BaseModel):
    session_id: str
    model: str
    length: int
    created_at: float
    expires_at: float
    busy: bool = False
    cache: dict[str, Any] = Field(default_factory=dict)


class SessionDeleted(BaseModel):
    session_id: str
    deleted: bool


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
