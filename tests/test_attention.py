"""Attention: one GQA implementation; MHA and MQA are its special cases."""

from __future__ import annotations

import math

import pytest
import torch

from model_core.attention import (
    GroupQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
    create_causal_mask,
    scaled_dot_product_attention,
)
from model_core.attention_utils import get_attention


def manual_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v with plain ops: the oracle for the SDPA wrapper."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def test_causal_mask_is_lower_triangular() -> None:
    mask = create_causal_mask(5)
    assert mask.dtype == torch.bool and mask.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            assert bool(mask[i, j]) == (j <= i)


def test_sdpa_matches_manual_formula() -> None:
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = create_causal_mask(7)
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, manual_attention(q, k, v, mask), atol=1e-6, rtol=0)


def copy_expanded(src: GroupQueryAttention, dst: GroupQueryAttention) -> None:
    """Give `dst` (more K/V heads) the weights of `src`, each K/V head repeated for the
    query heads it serves, so both compute the same function."""
    hd, repeat, d = src.head_dim, dst.num_groups // src.num_groups, src.embed_dim
    with torch.no_grad():
        dst.out_proj.load_state_dict(src.out_proj.state_dict())
        for name in ("weight", "bias"):
            q, k, v = getattr(src.in_proj, name).split([d, src.kv_dim, src.kv_dim], dim=0)
            k = k.view(src.num_groups, hd, *k.shape[1:]).repeat_interleave(repeat, 0)
            v = v.view(src.num_groups, hd, *v.shape[1:]).repeat_interleave(repeat, 0)
            merged = torch.cat([q, k.flatten(0, 1), v.flatten(0, 1)], dim=0)
            getattr(dst.in_proj, name).copy_(merged)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_with_all_groups_equals_mha(causal: bool) -> None:
    gqa = GroupQueryAttention(32, 8, num_groups=8, apply_causal_mask=causal)
    mha = MultiHeadAttention(32, 8, apply_causal_mask=causal)
    mha.load_state_dict(gqa.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(gqa(x, x, x), mha(x, x, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_with_one_group_equals_mqa(causal: bool) -> None:
    gqa = GroupQueryAttention(32, 8, num_groups=1, apply_causal_mask=causal)
    mqa = MultiQueryAttention(32, 8, apply_causal_mask=causal)
    mqa.load_state_dict(gqa.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(gqa(x, x, x), mqa(x, x, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_shared_kv_heads_equal_mha_with_repeated_heads(groups: int) -> None:
    """Independent of the implementation: GQA equals MHA whose K/V heads are copies."""
    gqa = GroupQueryAttention(32, 8, num_groups=groups, apply_causal_mask=True)
    mha = MultiHeadAttention(32, 8, apply_causal_mask=True)
    copy_expanded(gqa, mha)
    x = torch.randn(3, 6, 32)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=0)


def test_mha_matches_manual_multihead_computation() -> None:
    attn = MultiHeadAttention(16, 4)
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    out = attn(x, mem, mem)
    w, b = attn.in_proj.weight, attn.in_proj.bias
    q = (x @ w[:16].T + b[:16]).view(2, 5, 4, 4).transpose(1, 2)
    k, v = (mem @ w[16:].T + b[16:]).chunk(2, -1)
    k, v = (t.view(2, 7, 4, 4).transpose(1, 2) for t in (k, v))
    ref = manual_attention(q, k, v, torch.ones(5, 7, dtype=torch.bool))
    ref = attn.out_proj(ref.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_kv_projection_stores_only_group_heads() -> None:
    for kind, groups in (("mha", 8), ("gqa", 4), ("mqa", 1)):
        attn = get_attention(kind, embed_dim=64, num_heads=8, num_groups=4)
        assert attn.num_groups == groups
        assert attn.in_proj.out_features == 64 + 2 * groups * 8


def test_gqa_default_groups_is_half_the_heads() -> None:
    assert get_attention("gqa", embed_dim=64, num_heads=8).num_groups == 4
    assert GroupQueryAttention(64, 8).num_groups == 4


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(embed_dim=30, num_heads=8), "divisible"),
        (dict(embed_dim=64, num_heads=8, num_groups=3), "divide"),
        (dict(embed_dim=64, num_heads=8, num_groups=16), "between 1 and num_heads"),
        (dict(embed_dim=64, num_heads=0), "num_heads"),
    ],
)
def test_invalid_head_group_combinations_say_why(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        get_attention("gqa", **kwargs)


def test_unknown_attention_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="mha"):
        get_attention("flash", embed_dim=64, num_heads=8)


def test_key_padding_mask_hides_padded_keys() -> None:
    attn = MultiHeadAttention(16, 2)
    x = torch.randn(1, 6, 16)
    pad = torch.tensor([[False, False, False, False, True, True]])
    garbage = x.clone()
    garbage[:, 4:] = 100.0
    a = attn(x, key_padding_mask=pad)
    b = attn(garbage, key_padding_mask=pad)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    torch.testing.assert_close(a[:, :4], attn(x[:, :4]), atol=1e-6, rtol=0)
