"""Turning logits into tokens: temperature, top-k, top-p (nucleus), seeded generators.

Temperature 0 is greedy (argmax). `probabilities` gives the distribution that `sample`
draws from, so speculative decoding can compare target and draft under the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probabilities(logits: Tensor, params: SamplingParams) -> Tensor:
    """logits `(..., V)` -> the float32 distribution sampled from `(..., V)`. Greedy gives a
    one-hot on the argmax."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    # Shifted so the largest is 0 (softmax does not change), and the temperature kept at
    # float32's smallest normal or above (1e-40 is 0 or subnormal there): a tiny
    # temperature then sends all but the largest to -inf, never to NaN, and samples as
    # its limit, greedy.
    temperature = max(params.temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p is not None and params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= params.top_p
        drop[..., 0] = False  # even when top_p is 0 in float32 (1e-50)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_from(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of `(B, V)` probabilities -> `(B,)` token ids."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """logits `(B, V)` -> token ids `(B,)`."""
    params = SamplingParams(temperature, top_k, top_p)
    if params.greedy:
        return logits.argmax(dim=-1)
    return sample_from(probabilities(logits, params), generator)
