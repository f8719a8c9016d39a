"""Mixture of experts: a router sends each token to its top-k expert FFNs.

Routing (per forward call, over the real tokens of the batch):
1. router logits -> softmax probabilities p (float32), top-k experts per token, their
   weights renormalised to sum to 1;
2. capacity (training only): each expert takes at most `capacity` assignments, first come
   first served in token order (token-major, then choice); an assignment over capacity is
   handed to the dedicated overflow expert with the same weight;
3. output = sum over the token's assignments of weight * expert(x).

Capacity bounds the work per expert per training batch, as in Switch Transformer and
GShard. At inference (`eval()`) no token is dropped, so a token's output never depends on
the other tokens of the batch: a served request gives the same result alone or batched,
cached or recomputed. `capacity_at_inference=True` applies it in eval too.

Load-balancing loss (Switch Transformer scaling, Fedus et al. 2021, eq. 4-6):
    aux_loss = alpha * num_experts * sum_i f_i * P_i
f_i: fraction of the real tokens' top-k assignments routed to expert i (before capacity),
P_i: mean router probability of expert i. With perfectly uniform routing it equals alpha.
It reaches the router through P_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.ffn import FeedForward


@dataclass
class RoutingStats:
    """What the last forward did: assignments kept per expert and the overflow share."""

    tokens_per_expert: Tensor  # (E,) assignments each expert processed
    overflow_tokens: Tensor  # () assignments handed to the overflow expert
    total_assignments: Tensor  # () real tokens x topk

    @property
    def overflow_fraction(self) -> float:
        total = int(self.total_assignments)
        return int(self.overflow_tokens) / total if total else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "tokens_per_expert": self.tokens_per_expert.tolist(),
            "overflow_tokens": int(self.overflow_tokens),
            "overflow_fraction": self.overflow_fraction,
        }


class MOE(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        ffn_latent_dim: int,
        num_experts: int,
        capacity: int,
        alpha: float = 0.01,
        topk: int = 1,
        dropout: float = 0.0,
        capacity_at_inference: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= topk <= num_experts:
            raise ValueError(f"topk ({topk}) must be between 1 and num_experts ({num_experts})")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.num_experts = num_experts
        self.capacity = capacity
        self.alpha = alpha
        self.topk = topk
        self.capacity_at_inference = capacity_at_inference
        self.router = nn.Linear(embed_dim, num_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(embed_dim, ffn_latent_dim, dropout) for _ in range(num_experts)
        )
        self.overflow_expert = FeedForward(embed_dim, ffn_latent_dim, dropout)
        self.last_stats: RoutingStats | None = None

    def route(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x `(N, D)`, valid `(N,)` -> probs `(N, E)`, experts `(N, k)`, weights `(N, k)`,
        kept `(N, k)` (False: over capacity, or a padding token)."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        top_p, experts = probs.topk(self.topk, dim=-1)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
        kept = valid[:, None].expand_as(experts)
        if self.training or self.capacity_at_inference:
            # Queue rank of each assignment at its expert, in token-major order.
            onehot = F.one_hot(experts.reshape(-1), self.num_experts) * kept.reshape(-1, 1)
            rank = (onehot.cumsum(dim=0) - onehot).mul(onehot).sum(dim=-1)
            kept = kept & (rank < self.capacity).view_as(experts)
        return probs, experts, weights, kept

    def forward(self, x: Tensor, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x `(..., D)`; token_mask `(...)` True for real tokens (padding is not routed and
        gets a zero output). Returns the output `(..., D)` and the scalar aux loss."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        valid = (
            torch.ones(flat.shape[0], dtype=torch.bool, device=x.device)
            if token_mask is None
            else token_mask.reshape(-1)
        )
        probs, experts, weights, kept = self.route(flat, valid)
        out = torch.zeros_like(flat)

        # Group the kept assignments by expert: one matmul pair per expert.
        token_idx = torch.arange(flat.shape[0], device=x.device)[:, None].expand_as(experts)
        sel_expert, sel_token, sel_weight = experts[kept], token_idx[kept], weights[kept]
        order = sel_expert.argsort(stable=True)
        sel_token, sel_weight = sel_token[order], sel_weight[order]
        counts = torch.bincount(sel_expert, minlength=self.num_experts)
        start = 0
        for expert, n in zip(self.experts, counts.tolist(), strict=True):
            if n:
                idx = sel_token[start : start + n]
                y = expert(flat[idx]) * sel_weight[start : start + n, None].to(flat.dtype)
                out.index_add_(0, idx, y)
            start += n

        overflowed = valid[:, None] & ~kept  # (N, k)
        overflow_weight = (weights * overflowed).sum(dim=-1)  # (N,)
        over_idx = overflowed.any(dim=-1).nonzero(as_tuple=True)[0]
        if over_idx.numel():
            y = self.overflow_expert(flat[over_idx])
            out.index_add_(0, over_idx, y * overflow_weight[over_idx, None].to(flat.dtype))

        aux_loss = self._balance_loss(probs, experts, valid)
        self.last_stats = RoutingStats(
            counts.detach(), overflowed.sum().detach(), valid.sum().detach() * self.topk
        )
        return out.view(shape), aux_loss

    def _balance_loss(self, probs: Tensor, experts: Tensor, valid: Tensor) -> Tensor:
        n_real = valid.sum().clamp(min=1)
        assigned = F.one_hot(experts, self.num_experts).sum(dim=1) * valid[:, None]  # (N, E)
        f = assigned.sum(dim=0).float() / (n_real * self.topk)
        p = (probs * valid[:, None]).sum(dim=0) / n_real
        return self.alpha * self.num_experts * (f * p).sum()
