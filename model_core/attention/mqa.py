"""Multi-query attention: grouped-query attention with a single shared K/V head."""

from __future__ import annotations

from model_core.attention.gqa import GroupQueryAttention


class MultiQueryAttention(GroupQueryAttention):
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        apply_causal_mask: bool = False,
        use_kv_cache: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__(embed_dim, num_heads, 1, apply_causal_mask, use_kv_cache, bias)
