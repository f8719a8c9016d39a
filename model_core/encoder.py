"""Post-norm transformer encoder layer (the layer of all three model kinds' encoders).

    x = norm1(x + self_attn(x));  x = norm2(x + ffn(x))

The same architecture as `torch.nn.TransformerEncoderLayer(norm_first=False,
activation="relu", batch_first=True)`, and called the same way: `src_mask` and
`src_key_padding_mask` follow PyTorch's convention (bool True = not allowed / padding, or
an additive float mask), so a layer from `model_core.interop` is a drop-in replacement.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.attention.gqa import GroupQueryAttention
from model_core.configs import FFNConfig
from model_core.feed_forward_block import FeedForwardBlock
from model_core.kv_cache import CachePlan, LayerKV
from model_core.module_calls import layer_norm


def torch_mask_to_sdpa(mask: Tensor | None, batch: int | None = None) -> Tensor | None:
    """PyTorch layer mask (bool True = masked out, or additive; `[T, S]`, or
    `[B * num_heads, T, S]`, reshaped to `[B, num_heads, T, S]` when `batch` is given)
    -> SDPA (True = attend)."""
    if mask is None:
        return None
    if mask.dim() == 3 and batch is not None:
        mask = mask.reshape(batch, -1, *mask.shape[-2:])
    return mask if mask.is_floating_point() else ~mask


def torch_padding_to_sdpa(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """A PyTorch key padding mask `[B, S]` (bool True = padding, or additive float) with
    an SDPA attention mask -> (attention mask, bool key padding mask, token mask True =
    real token). A float padding mask is added to the attention mask, as PyTorch does."""
    if key_padding_mask is None:
        return attn_mask, None, None
    if not key_padding_mask.is_floating_point():
        return attn_mask, key_padding_mask, ~key_padding_mask
    additive = key_padding_mask[:, None, None, :]
    if attn_mask is None:
        combined = additive
    elif attn_mask.dtype == torch.bool:
        combined = additive.masked_fill(~attn_mask, float("-inf"))
    else:
        combined = attn_mask + additive
    return combined, None, ~torch.isneginf(key_padding_mask)


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_config: FFNConfig,
        num_groups: int | None = None,
        apply_causal_mask: bool = False,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        groups = num_heads if num_groups is None else num_groups
        self.self_attn = GroupQueryAttention(embed_dim, num_heads, groups, apply_causal_mask)
        self.ffn = FeedForwardBlock(ffn_config, dropout)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """src `(B, T, D)` -> `(B, T, D)`. is_causal defaults to `apply_causal_mask`."""
        attn_mask, pad, token_mask = torch_padding_to_sdpa(
            torch_mask_to_sdpa(src_mask, src.shape[0]), src_key_padding_mask
        )
        attn = self.self_attn(src, attn_mask=attn_mask, key_padding_mask=pad, is_causal=is_causal)
        x = self.norm1(src + self.dropout1(attn))
        return self.norm2(x + self.dropout2(self.ffn(x, token_mask)))

    def step(self, x: Tensor, cache: LayerKV, plan: CachePlan, token_mask: Tensor | None) -> Tensor:
        """New tokens `(B, T, D)` through the layer, attending over the KV cache."""
        x = layer_norm(self.norm1, x + self.self_attn.forward_cached(x, cache, plan))
        return layer_norm(self.norm2, x + self.ffn.forward(x, token_mask))
