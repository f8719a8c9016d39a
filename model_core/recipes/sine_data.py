"""Synthetic signals for the two sine recipes, drawn from a seeded `torch.Generator`.

`single_sines`: one noisy sine per row, `A * sin(2*pi*f*t + phi) + noise`, t = 0, 1, ...,
with its (amplitude, frequency, phase); the sine-regressor reads these.
`multi_sines`: a sum of 2 or 3 sines per row plus a little noise, with the clean signal
alongside; the sine-forecaster continues these.

All data is generated here (no external source, nothing to license).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# sine-regressor: parameter ranges (uniform). Frequency in cycles per step: 16 steps
# (the shortest input) see at least one full cycle, 4 steps per cycle at the fastest.
# Phase in [0, pi): with amplitude > 0 every (A, f, phi) in these ranges is a distinct
# signal, and there is no 2*pi wrap-around to confuse a regression loss.
AMPLITUDE_RANGE = (0.5, 2.0)
FREQUENCY_RANGE = (1 / 16, 1 / 4)
PHASE_RANGE = (0.0, math.pi)
NOISE_STD = 0.1
MIN_LEN, MAX_LEN = 16, 256

# sine-forecaster: each component's amplitude, frequency (cycles per step) and phase.
MULTI_AMPLITUDE_RANGE = (0.2, 1.0)
MULTI_FREQUENCY_RANGE = (0.02, 0.1)
MULTI_NOISE_STD = 0.05


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def target_stats() -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of (amplitude, frequency, phase) under their uniform
    ranges: the recipe trains on targets standardised with these."""
    bounds = torch.tensor([AMPLITUDE_RANGE, FREQUENCY_RANGE, PHASE_RANGE])
    mean = bounds.mean(dim=1)
    std = (bounds[:, 1] - bounds[:, 0]) / math.sqrt(12.0)
    return mean, std


@dataclass
class SineBatch:
    values: Tensor  # (B, T, 1), right-padded with zeros
    lengths: Tensor  # (B,) long
    params: Tensor  # (B, 3): amplitude, frequency (cycles/step), phase (radians)


def single_sines(
    batch: int,
    generator: torch.Generator,
    lengths: Tensor | None = None,
    noise_std: float = NOISE_STD,
) -> SineBatch:
    """`batch` noisy sines; row b has `lengths[b]` steps (default uniform in 16..256),
    padded to the longest."""
    if lengths is None:
        lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (batch,), generator=generator)
    amp = _uniform(batch, AMPLITUDE_RANGE, generator)
    freq = _uniform(batch, FREQUENCY_RANGE, generator)
    phase = _uniform(batch, PHASE_RANGE, generator)
    t = torch.arange(int(lengths.max()), dtype=torch.float32)
    clean = amp[:, None] * torch.sin(2 * math.pi * freq[:, None] * t + phase[:, None])
    noisy = clean + noise_std * torch.randn(clean.shape, generator=generator)
    noisy = noisy * (t < lengths[:, None])  # zero padding past each row's length
    return SineBatch(noisy[..., None], lengths, torch.stack([amp, freq, phase], dim=1))


@dataclass
class MultiSineBatch:
    noisy: Tensor  # (B, T, 1): what the model reads
    clean: Tensor  # (B, T, 1): the same without noise


def multi_sines(
    batch: int, length: int, generator: torch.Generator, noise_std: float = MULTI_NOISE_STD
) -> MultiSineBatch:
    """`batch` signals of `length` steps, each the sum of 2 or 3 sines with random
    amplitude, frequency and phase (in [0, 2*pi)), plus Gaussian noise."""
    components = 3
    amp = _uniform(batch * components, MULTI_AMPLITUDE_RANGE, generator).view(batch, components)
    amp[:, 2] *= torch.rand(batch, generator=generator) < 0.5  # 2 or 3 components
    freq = _uniform(batch * components, MULTI_FREQUENCY_RANGE, generator).view(batch, components)
    phase = 2 * math.pi * torch.rand(batch, components, generator=generator)
    t = torch.arange(length, dtype=torch.float32)
    angles = 2 * math.pi * freq[:, :, None] * t + phase[:, :, None]  # (B, C, T)
    clean = (amp[:, :, None] * torch.sin(angles)).sum(dim=1)
    noisy = clean + noise_std * torch.randn(clean.shape, generator=generator)
    return MultiSineBatch(noisy[..., None], clean[..., None])
