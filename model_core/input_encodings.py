"""Sinusoidal positional encoding (Vaswani et al., 2017) of absolute positions, so that
cached steps and sliding windows past `max_seq_len` get the right encoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_encoding(positions: Tensor, dim: int) -> Tensor:
    """positions `(..., T)` integer -> `(..., T, dim)`: sin on even, cos on odd features."""
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = torch.exp(half * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., T, ceil(dim/2))
    enc = torch.empty(*angles.shape[:-1], dim, device=positions.device)
    enc[..., 0::2] = torch.sin(angles)
    enc[..., 1::2] = torch.cos(angles[..., : dim // 2])
    return enc


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal encoding of each token's absolute position. Positions below
    `table_len` are looked up in a precomputed table (the decode path); later ones, which
    a sliding window reaches, are computed."""

    def __init__(self, embed_dim: int, table_len: int = 2048) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        table = sinusoidal_encoding(torch.arange(table_len), embed_dim)
        self.register_buffer("table", table, persistent=False)  # (table_len, D)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x `(B, T, D)`; positions `(B, T)` or `(T,)`, default `0..T-1`."""
        if positions is None:
            t = x.shape[1]
            enc = self.table[:t] if t <= self.table.shape[0] else self.encode(torch.arange(t))
        elif int(positions.max()) < self.table.shape[0]:
            enc = self.table[positions]
        else:
            enc = self.encode(positions)
        return x + enc.to(x.dtype)

    def encode(self, positions: Tensor) -> Tensor:
        return sinusoidal_encoding(positions.to(self.table.device), self.embed_dim)
