"""The dense feed-forward block: Linear -> ReLU -> Linear."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from model_core.module_calls import linear


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, latent_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, latent_dim)
        self.linear2 = nn.Linear(latent_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(linear(self.linear1, x))
        if self.training:  # eval skips the no-op module call (see module_calls)
            h = self.dropout(h)
        return linear(self.linear2, h)
