"""The attention factory of the specification."""

from __future__ import annotations

from model_core.attention.gqa import GroupQueryAttention, resolve_num_groups


def get_attention(
    kind: str,
    embed_dim: int,
    num_heads: int,
    num_groups: int | None = None,
    apply_causal_mask: bool = False,
    use_kv_cache: bool = False,
) -> GroupQueryAttention:
    """Build "mha", "mqa" or "gqa" attention. `num_groups` is used by "gqa" only
    (default `num_heads // 2`); "mha" has one K/V head per query head, "mqa" one in all."""
    groups = resolve_num_groups(kind, embed_dim, num_heads, num_groups)
    return GroupQueryAttention(embed_dim, num_heads, groups, apply_causal_mask, use_kv_cache)
