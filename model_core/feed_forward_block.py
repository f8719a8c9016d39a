"""The feed-forward sublayer of a transformer layer: dense FFN or mixture of experts."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.configs import FFNConfig
from model_core.ffn import FeedForward
from model_core.moe import MOE


class FeedForwardBlock(nn.Module):
    """Runs the layer's FFN or MoE and keeps the MoE aux loss of the last call
    (`aux_loss`, a zero tensor for a dense FFN) for the model to collect."""

    def __init__(self, config: FFNConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.net: nn.Module
        if config.use_moe:
            self.net = MOE(
                config.embed_dim,
                config.latent_dim,
                config.num_experts,
                config.capacity,
                config.alpha,
                config.topk,
                dropout,
            )
        else:
            self.net = FeedForward(config.embed_dim, config.latent_dim, dropout)
        self.aux_loss: Tensor | None = None

    @property
    def is_moe(self) -> bool:
        return isinstance(self.net, MOE)

    def forward(self, x: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """x `(B, T, D)`; token_mask `(B, T)` True for real tokens (used by MoE routing)."""
        if isinstance(self.net, MOE):
            out, self.aux_loss = self.net(x, token_mask)
            return out
        return self.net.forward(x)  # the dense FFN, without __call__ (see module_calls)

    def take_aux_loss(self) -> Tensor:
        loss = self.aux_loss
        return loss if loss is not None else torch.zeros(())
