"""Turning request bodies into model inputs, with a 422 that names the offending field
for anything the model cannot take."""

from __future__ import annotations

from typing import Any

from model_core import tokenizer
from server.catalog import ServedModel
from server.errors import ApiError
from server.schemas import InputFields, SamplingFields

BYTES = tokenizer.ByteTokenizer()


def invalid(param: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{param}: {message}", param)


def model_input(served: ServedModel, body: InputFields, allow_empty: bool = False) -> list[Any]:
    """The body's `input` or `prompt` as the model's input items (token ids or vectors)."""
    if (body.input is None) == (body.prompt is None):
        if body.input is None and body.prompt is None and allow_empty:
            return []
        raise invalid("input", "give exactly one of `input` (ids or values) and `prompt` (text)")
    if body.prompt is not None:
        if not served.byte_level:
            raise invalid(
                "prompt",
                f"{served.name!r} is not a byte-level text model; send `input` "
                f"({'token ids' if served.uses_tokens else 'value vectors'})",
            )
        try:
            items: list[Any] = BYTES.encode(body.prompt)
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") is not text
            raise invalid("prompt", f"not valid Unicode text ({exc.reason})") from exc
        if not items and not allow_empty:
            raise invalid("prompt", "the prompt is empty")
        return items
    items = list(body.input or [])
    if not items and not allow_empty:
        raise invalid("input", "the input is empty")
    check_items(served, items, "input")
    return items


def check_items(served: ServedModel, items: list[Any], param: str) -> None:
    cfg = served.config
    if served.uses_tokens:
        for i, item in enumerate(items):
            if isinstance(item, list):
                raise invalid(f"{param}.{i}", f"{served.name!r} takes token ids, not vectors")
            if not 0 <= item < cfg.vocab_size:
                raise invalid(f"{param}.{i}", f"token id {item} is outside [0, {cfg.vocab_size})")
        return
    for i, item in enumerate(items):
        if not isinstance(item, list):
            raise invalid(
                f"{param}.{i}", f"{served.name!r} takes value vectors of {cfg.input_dim} numbers"
            )
        if len(item) != cfg.input_dim:
            raise invalid(
                f"{param}.{i}", f"has {len(item)} numbers; the model's input_dim is {cfg.input_dim}"
            )


def check_lengths(
    served: ServedModel, prompt_len: int, body: SamplingFields, limit: int, extra: int = 0
) -> None:
    """max_new_tokens within the server's limit, and input + outputs within max_seq_len."""
    if body.max_new_tokens > limit:
        raise invalid("max_new_tokens", f"{body.max_new_tokens} is over the limit of {limit}")
    room = served.config.max_seq_len - extra
    if prompt_len + body.max_new_tokens > room:
        raise invalid(
            "max_new_tokens",
            f"input ({prompt_len}) + max_new_tokens ({body.max_new_tokens}) is over the model's "
            f"max_seq_len ({served.config.max_seq_len}); shorten one of them",
        )


def stop_tokens(served: ServedModel, body: SamplingFields) -> list[int]:
    if body.stop is None:
        return served.default_stop()
    if not served.uses_tokens:
        raise invalid("stop", "stop tokens apply to token models only")
    if len(body.stop) > served.config.vocab_size:  # then some repeat: a junk list
        raise invalid(
            "stop",
            f"{len(body.stop)} stop tokens; the vocabulary has only {served.config.vocab_size}",
        )
    check_items(served, body.stop, "stop")
    return list(body.stop)


def output_text(served: ServedModel, outputs: list[Any]) -> str | None:
    """Decoded text of a byte-level model's outputs (special tokens dropped)."""
    if not served.byte_level:
        return None
    return BYTES.decode(outputs)
