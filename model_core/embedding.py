"""Input embedding: token ids or value vectors into the model width, plus positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.input_encodings import PositionalEncoding


class InputEmbedding(nn.Module):
    """Token ids `(B, T)` (long) through an embedding table when `vocab_size` is set;
    values `(B, T, input_dim)` (float) through a linear projection. A token model also
    accepts values: they are projected into its embedding space as a soft prompt (this is
    how the specification's speculative-decoding example feeds values to token models)."""

    def __init__(
        self, input_dim: int, embed_dim: int, vocab_size: int | None, max_seq_len: int = 2048
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.vocab_size = vocab_size
        self.input_proj = nn.Linear(input_dim, embed_dim)
        self.token_embedding = nn.Embedding(vocab_size, embed_dim) if vocab_size else None
        self.positions = PositionalEncoding(embed_dim, max_seq_len)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        return self.positions(self.embed(x), positions)

    def embed(self, x: Tensor) -> Tensor:
        if x.is_floating_point():
            if x.dim() != 3 or x.shape[-1] != self.input_dim:
                raise ValueError(
                    f"value input must have shape [batch, seq_len, {self.input_dim}], "
                    f"got {list(x.shape)}"
                )
            return self.input_proj(x)
        if self.token_embedding is None:
            raise ValueError(
                f"this model reads values [batch, seq_len, {self.input_dim}] (float); it has no "
                f"vocabulary, but got integer input of shape {list(x.shape)}"
            )
        if x.dim() != 2:
            raise ValueError(f"token input must have shape [batch, seq_len], got {list(x.shape)}")
        return self.token_embedding(x)


def valid_mask(batch: int, seq_len: int, lengths: Tensor | None, device: torch.device) -> Tensor:
    """`(B, T)` bool, True for each row's first `lengths[b]` (real) tokens."""
    if lengths is None:
        return torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape [{batch}], got {list(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > seq_len).any()):
        raise ValueError(f"every length must be between 1 and {seq_len}, got {lengths.tolist()}")
    return torch.arange(seq_len, device=device) < lengths[:, None]
