"""Attention: one grouped-query implementation; MHA and MQA are names over it."""

from model_core.attention.gqa import GroupQueryAttention, resolve_num_groups
from model_core.attention.masks import create_causal_mask, scaled_dot_product_attention
from model_core.attention.mha import MultiHeadAttention
from model_core.attention.mqa import MultiQueryAttention

__all__ = [
    "GroupQueryAttention",
    "MultiHeadAttention",
    "MultiQueryAttention",
    "create_causal_mask",
    "resolve_num_groups",
    "scaled_dot_product_attention",
]
