"""Bodies of the OpenAI-compatible POST /v1/completions, as in OpenAI's API reference.

Every field of OpenAI's request is accepted by name (clients such as the `openai`
package or LangChain send some of them with their neutral values, often null); the ones
kvserve cannot honour (`logprobs`, penalties, `logit_bias`, `suffix`, a `best_of` other
than `n`) are refused by the route with a 422 naming them. A null means the default, as
in OpenAI's API. Any other field is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# OpenAI's ranges; `seed` takes any 64-bit integer (signed or not).
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
Stops = Annotated[list[str], Field(max_length=4)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(
        False, description="send a last chunk with the request's usage (and empty choices)"
    )


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
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
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, a list of texts, or token ids (a list, or a list of lists)"
    )
    max_tokens: int = Field(16, ge=1, description="tokens to generate per choice")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    n: int = Field(1, ge=1, le=128, description="completions per prompt")
    stop: str | Stops | None = Field(
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
