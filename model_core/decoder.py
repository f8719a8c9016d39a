"""Post-norm transformer decoder layer: causal self-attention, cross-attention, FFN.

    x = norm1(x + self_attn(x));  x = norm2(x + cross_attn(x, memory));  x = norm3(x + ffn(x))

The same architecture as `torch.nn.TransformerDecoderLayer(norm_first=False,
activation="relu", batch_first=True)`, called the same way (PyTorch's mask conventions:
bool True = not allowed / padding, or additive float).
"""

from __future__ import annotations

from torch import Tensor, nn

from model_core.attention.gqa import GroupQueryAttention
from model_core.attention.masks import combine_masks
from model_core.configs import FFNConfig
from model_core.encoder import torch_mask_to_sdpa, torch_padding_to_sdpa
from model_core.feed_forward_block import FeedForwardBlock
from model_core.kv_cache import CachePlan, LayerKV
from model_core.module_calls import layer_norm


class TransformerDecoderLayer(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_config: FFNConfig,
        num_groups: int | None = None,
        apply_causal_mask: bool = True,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        groups = num_heads if num_groups is None else num_groups
        self.self_attn = GroupQueryAttention(embed_dim, num_heads, groups, apply_causal_mask)
        self.cross_attn = GroupQueryAttention(embed_dim, num_heads, groups)
        self.ffn = FeedForwardBlock(ffn_config, dropout)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """tgt `(B, T, D)`, memory `(B, S, D)` -> `(B, T, D)`. `memory_is_causal` is
        accepted for PyTorch's signature; as there, it is a hint and `memory_mask` is
        the mask."""
        b = tgt.shape[0]
        self_mask, tgt_pad, token_mask = torch_padding_to_sdpa(
            torch_mask_to_sdpa(tgt_mask, b), tgt_key_padding_mask
        )
        attn = self.self_attn(
            tgt, attn_mask=self_mask, key_padding_mask=tgt_pad, is_causal=tgt_is_causal
        )
        x = self.norm1(tgt + self.dropout1(attn))
        cross_mask, mem_pad, _ = torch_padding_to_sdpa(
            torch_mask_to_sdpa(memory_mask, b), memory_key_padding_mask
        )
        cross = self.cross_attn(
            x, memory, attn_mask=cross_mask, key_padding_mask=mem_pad, is_causal=False
        )
        x = self.norm2(x + self.dropout2(cross))
        return self.norm3(x + self.dropout3(self.ffn(x, token_mask)))

    def step(
        self,
        x: Tensor,
        cache: LayerKV,
        plan: CachePlan,
        memory_kv: tuple[Tensor, Tensor],
        memory_padding_mask: Tensor | None,
        token_mask: Tensor | None,
    ) -> Tensor:
        """New target tokens `(B, T, D)`, attending over the self-attention cache and the
        encoder output's K/V (projected once per source by `cross_attn.project_kv`)."""
        x = layer_norm(self.norm1, x + self.self_attn.forward_cached(x, cache, plan))
        mem_mask = combine_masks(None, memory_padding_mask)
        x = layer_norm(self.norm2, x + self.cross_attn.attend_to(x, *memory_kv, mem_mask))
        return layer_norm(self.norm3, x + self.ffn.forward(x, token_mask))
