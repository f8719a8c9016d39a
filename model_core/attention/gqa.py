"""Grouped-query attention: the one attention implementation of model_core.

MHA is GQA with `num_groups == num_heads`, MQA is GQA with `num_groups == 1`. Only the
`num_groups` K/V heads are projected and cached; SDPA expands them to the query heads
(`enable_gqa`), so the cache savings of MQA/GQA are real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.attention.masks import combine_masks, scaled_dot_product_attention
from model_core.kv_cache import CachePlan, LayerKV
from model_core.module_calls import linear


def resolve_num_groups(
    attention_type: str, embed_dim: int, num_heads: int, num_groups: int | None
) -> int:
    """The number of K/V heads for an attention type, checked against the head count."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) so that "
            "every head has the same width"
        )
    if attention_type == "mha":
        return num_heads
    if attention_type == "mqa":
        return 1
    if attention_type != "gqa":
        raise ValueError(f"attention type must be 'mha', 'mqa' or 'gqa', got {attention_type!r}")
    groups = num_groups if num_groups is not None else max(1, num_heads // 2)
    if groups < 1 or num_heads % groups:
        raise ValueError(
            f"num_groups ({groups}) must be between 1 and num_heads ({num_heads}) and divide "
            "it, so that each K/V head serves the same number of query heads"
        )
    return groups


class GroupQueryAttention(nn.Module):
    """Attention with `num_heads` query heads sharing `num_groups` key/value heads.

    Called as `attn(query, key, value)` (key/value default to query) it is plain
    attention, causal when `apply_causal_mask`. The models call `forward_cached` (self
    attention over a KV cache) and `attend_to` (cross-attention over K/V projected once
    by `project_kv`). `use_kv_cache` is recorded for the specification's factory; the
    caches themselves are owned by the model, so one module serves many sequences.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_groups: int | None = None,
        apply_causal_mask: bool = False,
        use_kv_cache: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_groups = resolve_num_groups("gqa", embed_dim, num_heads, num_groups)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.apply_causal_mask = apply_causal_mask
        self.use_kv_cache = use_kv_cache
        self.kv_dim = self.num_groups * self.head_dim
        # Q, K and V projections stacked in one matrix (rows: Q, then K, then V), as in
        # PyTorch's `in_proj_weight`: self-attention projects all three in one matmul.
        self.in_proj = nn.Linear(embed_dim, embed_dim + 2 * self.kv_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _split_heads(self, x: Tensor, heads: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)  # (B, h, T, hd)

    def _project(self, x: Tensor, rows: slice) -> Tensor:
        bias = None if self.in_proj.bias is None else self.in_proj.bias[rows]
        return F.linear(x, self.in_proj.weight[rows], bias)

    def project_q(self, x: Tensor) -> Tensor:
        q = self._project(x, slice(0, self.embed_dim))
        return self._split_heads(q, self.num_heads)  # (B, H, T, hd)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kv = self._project(x, slice(self.embed_dim, None))
        k, v = kv.split(self.kv_dim, dim=-1)
        return self._split_heads(k, self.num_groups), self._split_heads(v, self.num_groups)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qkv = linear(self.in_proj, x)
        q, k, v = qkv.split([self.embed_dim, self.kv_dim, self.kv_dim], dim=-1)
        return (
            self._split_heads(q, self.num_heads),
            self._split_heads(k, self.num_groups),
            self._split_heads(v, self.num_groups),
        )

    def _merge(self, out: Tensor) -> Tensor:
        b, _, t, _ = out.shape  # (B, H, T, hd) -> (B, T, D)
        return linear(self.out_proj, out.transpose(1, 2).reshape(b, t, self.embed_dim))

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """query `[B, Tq, D]`, key/value `[B, Tk, D]` -> `[B, Tq, D]`.

        attn_mask: bool (True = attend) or additive float, broadcastable to
        `[B, H, Tq, Tk]`. key_padding_mask: `[B, Tk]`, True marks padding (PyTorch's
        convention). is_causal defaults to the module's `apply_causal_mask`.
        """
        key = query if key is None else key
        value = key if value is None else value
        if key is query and value is query:
            q, k, v = self.project_qkv(query)
        elif value is key:
            q, (k, v) = self.project_q(query), self.project_kv(key)
        else:
            q, k, v = self.project_q(query), self.project_kv(key)[0], self.project_kv(value)[1]
        causal = self.apply_causal_mask if is_causal is None else is_causal
        tq, tk = q.shape[-2], k.shape[-2]
        if causal and attn_mask is None and key_padding_mask is None and tq == tk:
            return self._merge(scaled_dot_product_attention(q, k, v, is_causal=True))
        if causal:
            causal_mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
            attn_mask = causal_mask if attn_mask is None else _and_masks(attn_mask, causal_mask)
        mask = combine_masks(attn_mask, key_padding_mask)
        return self._merge(scaled_dot_product_attention(q, k, v, mask))

    def attend_to(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention of `x` `[B, T, D]` over precomputed K/V `[B, G, S, hd]`."""
        return self._merge(scaled_dot_product_attention(self.project_q(x), k, v, mask))

    def forward_cached(self, x: Tensor, cache: LayerKV, plan: CachePlan) -> Tensor:
        """Self-attention of new tokens `x` `[B, T, D]`: write their K/V into the cache
        at the plan's slots, then attend over the cache with the plan's mask."""
        q, k, v = self.project_qkv(x)
        cache.write(k, v, plan)
        keys, values = cache.read(plan)
        return self._merge(scaled_dot_product_attention(q, keys, values, plan.mask))


def _and_masks(attn_mask: Tensor, allowed: Tensor) -> Tensor:
    if attn_mask.dtype == torch.bool:
        return attn_mask & allowed
    return attn_mask.masked_fill(~allowed, float("-inf"))
