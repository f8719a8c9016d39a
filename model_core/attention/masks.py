"""Masks and the attention kernel. Boolean masks follow PyTorch's SDPA convention:
True means "may attend"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def create_causal_mask(seq_len: int, device: torch.device | str | None = None) -> Tensor:
    """Lower-triangular `[seq_len, seq_len]` bool mask: query i may attend to keys 0..i."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over the last two dims.

    query `[..., Tq, d]`, key/value `[..., Tk, d]`; `mask` broadcasts to `[..., Tq, Tk]`,
    bool (True = attend) or additive float; `is_causal` (with no mask) masks the future.
    Key/value may have fewer heads than the query
    (dim -3) when the query's head count is a multiple of theirs (GQA/MQA).
    """
    gqa = query.dim() >= 3 and key.dim() >= 3 and key.shape[-3] != query.shape[-3]
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa
    )


def padding_to_attention_mask(key_padding_mask: Tensor) -> Tensor:
    """`[B, S]` (True = padding, PyTorch's convention) -> `[B, 1, 1, S]` (True = attend)."""
    return (~key_padding_mask)[:, None, None, :]


def combine_masks(attn_mask: Tensor | None, key_padding_mask: Tensor | None) -> Tensor | None:
    """One mask for SDPA from an attention mask (bool True = attend, or additive float)
    and a key padding mask (True = padding)."""
    if key_padding_mask is None:
        return attn_mask
    pad = padding_to_attention_mask(key_padding_mask)
    if attn_mask is None:
        return pad
    if attn_mask.dtype == torch.bool:
        return attn_mask & pad
    return attn_mask.masked_fill(~pad, float("-inf"))
