"""What the server answers, as frozen dataclasses, each parsed by its `from_json`.

Fields this client does not know are ignored, so a newer server may send more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def _known_fields(cls: type[T], data: dict[str, Any], **nested: Any) -> T:
    """`cls` from a JSON object, ignoring fields this client does not know (a newer server
    may send more)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{**{k: v for k, v in data.items() if k in names}, **nested})


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens a session's KV cache already held

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return _known_fields(cls, data)


@dataclass(frozen=True)
class SpeculativeStats:
    rounds: int
    proposed: int
    accepted: int
    rejected: int
    acceptance_rate: float
    alpha: float

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SpeculativeStats | None:
        return None if data is None else _known_fields(cls, data)


@dataclass(frozen=True)
class GenerateResult:
    """The answer of generate, seq2seq, speculative and a session's generate."""

    id: str
    model: str
    outputs: list[Any]  # token ids, or value vectors for value models
    text: str | None  # byte-level models: the outputs decoded
    finish_reason: str  # "length" or "stop"
    usage: Usage
    speculative: SpeculativeStats | None = None
    session_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerateResult:
        return _known_fields(
            cls,
            data,
            usage=Usage.from_json(data["usage"]),
            speculative=SpeculativeStats.from_json(data.get("speculative")),
        )


@dataclass(frozen=True)
class PredictResult:
    id: str
    model: str
    outputs: list[list[float]]  # one vector per input sequence
    usage: Usage

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictResult:
        return _known_fields(cls, data, usage=Usage.from_json(data["usage"]))


@dataclass(frozen=True)
class TokenEvent:
    """One streamed output: `token` (token models) or `value` (value models); `text` is
    the text it completes, for byte-level models (possibly "" mid-character)."""

    index: int
    token: int | None = None
    value: list[float] | None = None
    text: str | None = None


@dataclass(frozen=True)
class Done:
    """A stream's last event."""

    id: str | None
    model: str | None
    finish_reason: str
    usage: Usage
    speculative: SpeculativeStats | None = None
    session_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Done:
        return cls(
            data.get("id"),
            data.get("model"),
            data["finish_reason"],
            Usage.from_json(data["usage"]),
            SpeculativeStats.from_json(data.get("speculative")),
            data.get("session_id"),
        )


@dataclass(frozen=True)
class Limits:
    max_seq_len: int
    max_new_tokens: int
    max_batch_size: int
    max_body_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    """A model's card (GET /v1/models/{id})."""

    id: str
    kind: str  # "regression", "autoregressive" or "encoder_decoder"
    input_form: str  # "tokens" or "values"
    attention_type: str
    num_layers: int
    embed_dim: int
    num_heads: int
    max_seq_len: int
    parameters: int
    devices: list[str]
    limits: Limits
    input_dim: int | None = None
    output_dim: int | None = None
    vocab_size: int | None = None
    tokenizer: str | None = None  # "bytes" for byte-level text models (they take `prompt`)
    num_groups: int | None = None
    window: int | None = None
    moe: dict[str, Any] | None = None
    special_tokens: dict[str, int] | None = None
    source_pad_to: int | None = None
    task: str | None = None
    metrics: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return _known_fields(cls, data, limits=_known_fields(Limits, data["limits"]))


def models_from_json(data: dict[str, Any]) -> list[ModelInfo]:
    """Every card of a model list (GET /v1/models: `{"data": [card, ...]}`)."""
    return [ModelInfo.from_json(card) for card in data["data"]]


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    length: int  # items in the history: sent and generated
    expires_at: float  # Unix time
    created_at: float | None = None
    busy: bool = False
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionInfo:
        return _known_fields(cls, data)


@dataclass(frozen=True)
class Health:
    ready: bool
    status: str  # "ready", or the error type ("unavailable")
    message: str | None = None
