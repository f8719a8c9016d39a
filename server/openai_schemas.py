"""Bodies of the OpenAI-compatible POST /v1/completions, as in OpenAI's API reference.

Every field of OpenAI's request is accepted by name (clients such as the `openai`
package or LangChain send some of them with their neutral values, often null); the ones
kvserve cannot honour (`logprobs`, penalties, `logit_bias`, `suffix`, a `best_of` other
than `n`) are refused by the route with a 422 naming them. A null means the default, as
in OpenAI's API. Any other field is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

PROMPT_FORMS = "a string, a list of strings, a list of token ids, or a list of lists of ids"


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _prompts(value: Any) -> list[str | list[int]]:
    """OpenAI's four forms of `prompt` as a list of prompts, each text or ids. (One
    validator rather than a union, so that an error names `prompt`, not a union member.)"""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and _is_ids(value):
        return [list(value)]
    texts = isinstance(value, list) and all(isinstance(p, str) for p in value)
    if texts or (isinstance(value, list) and all(_is_ids(p) for p in value)):
        return [p if isinstance(p, str) else list(p) for p in value]
    raise PydanticCustomError("prompt_form", "the prompt must be " + PROMPT_FORMS)


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Ids = {"type": "array", "items": {"type": "integer"}}
Prompts = Annotated[
    list[str | list[int]],
    PlainValidator(_prompts),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                Ids,
                {"type": "array", "items": Ids},
            ]
        }
    ),
]
Stops = Annotated[
    list[str],
    BeforeValidator(_one_or_list),
    Field(max_length=4),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            ]
        }
    ),
]
# OpenAI's range: any 64-bit integer, signed or not.
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = Field(
        False, description="send a last chunk with the request's usage (and empty choices)"
    )


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # "16" or true for a number is a 422 (as OpenAI's API), not a coercion
        json_schema_extra={
            "examples": [
                {"model": "text-lm", "prompt": "def fibonacci(n):", "max_tokens": 32},
                {
                    "model": "text-lm",
                    "prompt": ["import ", "class "],
                    "max_tokens": 16,
                    "temperature": 0.8,
                    "n": 2,
                    "seed": 1,
                    "stop": ["\n"],
                },
            ]
        },
    )

    model: str
    prompt: Prompts = Field(description=PROMPT_FORMS + " (read as a list of prompts)")
    max_tokens: int = Field(16, ge=1, description="tokens to generate per choice")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    n: int = Field(1, ge=1, le=128, description="completions per prompt")
    stop: Stops | None = Field(
        None, description="up to 4 strings; generation ends before the first one found"
    )
    seed: Seed | None = Field(None, description="reproducible sampling")
    stream: bool = Field(False, description="Server-Sent Events `data: {chunk}`, then [DONE]")
    stream_options: StreamOptions | None = None
    echo: bool = Field(False, description="put the prompt before each completion's text")
    user: str | None = None
    # Accepted with their neutral values only (the route says why otherwise).
    logprobs: int | None = Field(None, description="not supported: null only")
    presence_penalty: float | None = Field(None, description="not supported: 0 only")
    frequency_penalty: float | None = Field(None, description="not supported: 0 only")
    best_of: int | None = Field(None, description="null, or equal to n")
    suffix: str | None = Field(None, description="not supported: null only")
    logit_bias: dict[str, float] | None = Field(None, description="not supported: null or {}")

    @field_validator("max_tokens", "temperature", "top_p", "n", "stream", "echo", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].default
        return value


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    """The whole answer; a streamed chunk has this shape too, with a delta as each
    choice's text, `finish_reason` null until its last chunk, and no usage (but for the
    last chunk with `stream_options.include_usage`: empty choices and the usage)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
