"""Generation loops as plain functions: prefill once, then one cached step per token."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from model_core.inference import inference_entry_point
from model_core.sampling import sample


def last_real(out: Tensor, lengths: Tensor | None) -> Tensor:
    """`(B, T, X)` -> `(B, X)`: the output at each row's last real position."""
    if lengths is None:
        return out[:, -1]
    return out[torch.arange(out.shape[0], device=out.device), lengths.to(out.device) - 1]


def next_from_output(model: Any, out: Tensor, lengths: Tensor | None) -> Tensor:
    """Greedy continuation: `(B, 1)` token ids for token models, `(B, 1, out)` values."""
    last = last_real(out, lengths)
    if model.config.uses_tokens:
        return last.argmax(dim=-1, keepdim=True)
    return last[:, None, :]


def _check_feedback(model: Any) -> None:
    cfg = model.config
    if not cfg.uses_tokens and cfg.output_dim != cfg.input_dim:
        raise ValueError(
            f"a value model generates by feeding its output back as input, so output_dim "
            f"({cfg.output_dim}) must equal input_dim ({cfg.input_dim})"
        )


def _decode_loop(
    model: Any,
    cache: Any,
    first: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """From the prefill's last outputs `first` `(B, X)`, produce `max_new_tokens`."""
    uses_tokens = model.config.uses_tokens
    outputs = []
    last = first
    for i in range(max_new_tokens):
        if uses_tokens:
            nxt = sample(last, temperature, top_k, top_p, generator)[:, None]  # (B, 1)
        else:
            nxt = last[:, None, :]  # (B, 1, out)
        outputs.append(nxt)
        if i + 1 < max_new_tokens:
            last = model.step(nxt, cache)[:, -1]
    return torch.cat(outputs, dim=1)


@inference_entry_point
def generate(
    model: Any,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    lengths: Tensor | None = None,
    sliding: bool = False,
) -> Tensor:
    """Continue `prompt` (`(B, T)` tokens or `(B, T, input_dim)` values, right-padded to
    `lengths`) by `max_new_tokens`: new tokens `(B, N)` or values `(B, N, output_dim)`.

    Token models sample with `temperature` (0 = greedy), `top_k`, `top_p`, `generator`;
    value models feed each output back as the next input. `sliding=True` decodes with the
    sliding-window cache (no length limit); otherwise the cache holds prompt + new tokens.
    """
    _check_feedback(model)
    b, t = prompt.shape[0], prompt.shape[1]
    capacity = t + max_new_tokens
    if not sliding and capacity > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({t}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
            f"({model.config.max_seq_len}); shorten them or pass sliding=True"
        )
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=prompt.device)
    cache = model.new_cache(b, capacity=capacity, sliding=sliding)
    out = model.step(prompt, cache, lengths)
    first = last_real(out, lengths)
    return _decode_loop(model, cache, first, max_new_tokens, temperature, top_k, top_p, generator)


@inference_entry_point
def generate_seq2seq(
    model: Any,
    source: Tensor,
    start: Tensor,
    max_new_tokens: int,
    source_lengths: Tensor | None = None,
    **sampling: Any,
) -> Tensor:
    """Encode `source` once, then decode from the target prefix `start` (e.g. a BOS
    token per row) with the decoder cache; cross-attention K/V are projected once."""
    _check_feedback(model)
    memory = model.encode(source, source_lengths)
    capacity = start.shape[1] + max_new_tokens
    cache = model.new_cache(memory, source_lengths, capacity=capacity)
    first = model.step(start, cache)[:, -1]
    return _decode_loop(
        model,
        cache,
        first,
        max_new_tokens,
        sampling.get("temperature", 0.0),
        sampling.get("top_k"),
        sampling.get("top_p"),
        sampling.get("generator"),
    )
