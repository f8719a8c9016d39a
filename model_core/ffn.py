"""The dense feed-forward block: Linear -> ReLU -> Linear."""

from __future__ import annotations

from torch import Tensor, nn


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, latent_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, latent_dim)
        self.linear2 = nn.Linear(latent_dim, embed_dim)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))
