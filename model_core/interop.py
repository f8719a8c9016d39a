"""Conversion between PyTorch's own transformer layers and model_core's.

`from_torch_encoder_layer` / `from_torch_decoder_layer` copy the weights of a
`torch.nn.TransformerEncoderLayer` / `TransformerDecoderLayer` into a model_core layer
that computes the same function and is called the same way (PyTorch's mask
conventions), so it is a drop-in replacement. `to_torch_encoder_layer` /
`to_torch_decoder_layer` go the other way for the layers PyTorch can express (MHA, dense
FFN).

Weight mapping: PyTorch's `MultiheadAttention.in_proj_weight` `[3D, D]` holds the Q, K
and V projections stacked, and so does model_core's `in_proj` (for MHA, the same shape).
A PyTorch layer built with `bias=False` has no biases (not even
in its LayerNorms); the copy gets zero biases, which computes the same thing.

Only what both sides can compute is converted; anything else raises ValueError saying
why: the PyTorch layer must be `batch_first=True`, `norm_first=False`, with a ReLU
activation, and its attention must have equal q/k/v widths, no `add_bias_kv` and no
`add_zero_attn`. model_core's attention has no attention-weight dropout: in training
mode a converted layer drops out the sublayer outputs and the FFN's hidden units as
PyTorch does, but not the attention weights (identical in eval mode).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.attention.gqa import GroupQueryAttention
from model_core.configs import FFNConfig
from model_core.decoder import TransformerDecoderLayer
from model_core.encoder import TransformerEncoderLayer
from model_core.ffn import FeedForward

TorchLayer = nn.TransformerEncoderLayer | nn.TransformerDecoderLayer
OurLayer = TransformerEncoderLayer | TransformerDecoderLayer


def _our_layer_settings(layer: TorchLayer) -> dict[str, Any]:
    """Constructor arguments of the model_core layer equivalent to PyTorch's `layer`:
    multi-head (one K/V head per query head), not causal by itself (masks come from the
    caller, as with PyTorch)."""
    d_model, nhead, eps, dropout = _layer_shape(layer)
    return {
        "embed_dim": d_model,
        "num_heads": nhead,
        "ffn_config": FFNConfig(embed_dim=d_model, latent_dim=layer.linear1.out_features),
        "num_groups": nhead,
        "apply_causal_mask": False,
        "dropout": dropout,
        "layer_norm_eps": eps,
    }


def from_torch_encoder_layer(layer: nn.TransformerEncoderLayer) -> TransformerEncoderLayer:
    """A model_core encoder layer with the weights of PyTorch's `layer` (same outputs for
    the same `src`, `src_mask`, `src_key_padding_mask`); in eval mode if `layer` was."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise TypeError(f"expected torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
    _check_torch_layer(layer, "encoder")
    ours = TransformerEncoderLayer(**_our_layer_settings(layer))
    _finish(ours, layer)
    with torch.no_grad():
        _copy_attention_from_torch(ours.self_attn, layer.self_attn)
        _copy_ffn_from_torch(ours, layer)
        _copy_norms(ours, layer, ("norm1", "norm2"))
    return ours


def from_torch_decoder_layer(layer: nn.TransformerDecoderLayer) -> TransformerDecoderLayer:
    """A model_core decoder layer with the weights of PyTorch's `layer` (same outputs for
    the same `tgt`, `memory` and masks); in eval mode if `layer` was. Its self-attention
    is not causal by itself: pass `tgt_mask` (or `tgt_is_causal=True`) as with PyTorch."""
    if not isinstance(layer, nn.TransformerDecoderLayer):
        raise TypeError(f"expected torch.nn.TransformerDecoderLayer, got {type(layer).__name__}")
    _check_torch_layer(layer, "decoder")
    _check_torch_attention(layer.multihead_attn, "decoder", "multihead_attn")
    ours = TransformerDecoderLayer(**_our_layer_settings(layer))
    _finish(ours, layer)
    with torch.no_grad():
        _copy_attention_from_torch(ours.self_attn, layer.self_attn)
        _copy_attention_from_torch(ours.cross_attn, layer.multihead_attn)
        _copy_ffn_from_torch(ours, layer)
        _copy_norms(ours, layer, ("norm1", "norm2", "norm3"))
    return ours


def _torch_layer_settings(layer: OurLayer, ffn: FeedForward) -> dict[str, Any]:
    """Constructor arguments of the PyTorch layer equivalent to `layer`."""
    return {
        "d_model": layer.self_attn.embed_dim,
        "nhead": layer.self_attn.num_heads,
        "dim_feedforward": ffn.linear1.out_features,
        "dropout": layer.dropout1.p,
        "activation": "relu",
        "layer_norm_eps": layer.norm1.eps,
        "batch_first": True,
        "norm_first": False,
    }


def to_torch_encoder_layer(layer: TransformerEncoderLayer) -> nn.TransformerEncoderLayer:
    """PyTorch's `TransformerEncoderLayer(batch_first=True)` with the weights of our
    `layer` (multi-head attention with a dense FFN only); in eval mode if `layer` was."""
    ffn = _check_our_layer(layer)
    torch_layer = nn.TransformerEncoderLayer(**_torch_layer_settings(layer, ffn))
    _finish(torch_layer, layer)
    with torch.no_grad():
        _copy_attention_to_torch(torch_layer.self_attn, layer.self_attn)
        _copy_ffn_to_torch(torch_layer, ffn)
        _copy_norms(torch_layer, layer, ("norm1", "norm2"))
    return torch_layer


def to_torch_decoder_layer(layer: TransformerDecoderLayer) -> nn.TransformerDecoderLayer:
    """PyTorch's `TransformerDecoderLayer(batch_first=True)` with the weights of our
    `layer` (multi-head attention with a dense FFN only); in eval mode if `layer` was.
    PyTorch's layer is never causal by itself: pass `tgt_mask` for a causal decoder."""
    ffn = _check_our_layer(layer)
    torch_layer = nn.TransformerDecoderLayer(**_torch_layer_settings(layer, ffn))
    _finish(torch_layer, layer)
    with torch.no_grad():
        _copy_attention_to_torch(torch_layer.self_attn, layer.self_attn)
        _copy_attention_to_torch(torch_layer.multihead_attn, layer.cross_attn)
        _copy_ffn_to_torch(torch_layer, ffn)
        _copy_norms(torch_layer, layer, ("norm1", "norm2", "norm3"))
    return torch_layer


def _check_torch_layer(layer: TorchLayer, what: str) -> None:
    name = f"torch.nn.Transformer{what.capitalize()}Layer"
    if not layer.self_attn.batch_first:
        raise ValueError(
            f"{name} must be built with batch_first=True: model_core layers read "
            "(batch, seq, feature) and a (seq, batch, feature) layer's weights would be "
            "called with transposed inputs"
        )
    if layer.norm_first:
        raise ValueError(
            f"{name} must be built with norm_first=False: model_core layers are post-norm "
            "(x = norm(x + sublayer(x))), a pre-norm layer computes a different function"
        )
    activation = layer.activation
    if not (activation is F.relu or isinstance(activation, nn.ReLU)):
        raise ValueError(
            f"{name} must use activation='relu': model_core's feed-forward block is "
            f"Linear -> ReLU -> Linear, got activation {activation!r}"
        )
    _check_torch_attention(layer.self_attn, what, "self_attn")


def _check_torch_attention(attn: nn.MultiheadAttention, what: str, name: str) -> None:
    where = f"the {what} layer's {name}"
    if not attn._qkv_same_embed_dim:
        raise ValueError(
            f"{where} has kdim/vdim different from embed_dim; model_core attention "
            "projects keys and values from embed_dim-wide inputs"
        )
    if attn.bias_k is not None or attn.bias_v is not None:
        raise ValueError(f"{where} uses add_bias_kv=True, which model_core does not support")
    if attn.add_zero_attn:
        raise ValueError(f"{where} uses add_zero_attn=True, which model_core does not support")


def _check_our_layer(layer: OurLayer) -> FeedForward:
    attn = layer.self_attn
    if attn.num_groups != attn.num_heads:
        raise ValueError(
            f"PyTorch's layers have multi-head attention only; this layer has "
            f"{attn.num_groups} K/V groups for {attn.num_heads} heads (GQA/MQA)"
        )
    if not isinstance(layer.ffn.net, FeedForward):
        raise ValueError(
            "PyTorch's layers have a dense FFN only; this layer uses mixture of experts"
        )
    return layer.ffn.net


def _layer_shape(layer: TorchLayer) -> tuple[int, int, float, float]:
    """(d_model, nhead, layer_norm_eps, dropout) of a PyTorch layer."""
    attn = layer.self_attn
    return attn.embed_dim, attn.num_heads, layer.norm1.eps, layer.dropout.p


def _finish(target: nn.Module, source: nn.Module) -> None:
    """Match the source's device, dtype and train/eval mode."""
    weight = next(source.parameters())
    target.to(device=weight.device, dtype=weight.dtype)
    target.train(source.training)


def _copy_bias(dst: Tensor, src: Tensor | None) -> None:
    if src is None:
        dst.zero_()
    else:
        dst.copy_(src)


def _copy_attention_from_torch(ours: GroupQueryAttention, theirs: nn.MultiheadAttention) -> None:
    ours.in_proj.weight.copy_(theirs.in_proj_weight)  # Q, K, V rows in both
    _copy_bias(ours.in_proj.bias, theirs.in_proj_bias)
    ours.out_proj.weight.copy_(theirs.out_proj.weight)
    _copy_bias(ours.out_proj.bias, theirs.out_proj.bias)


def _copy_attention_to_torch(theirs: nn.MultiheadAttention, ours: GroupQueryAttention) -> None:
    theirs.in_proj_weight.copy_(ours.in_proj.weight)
    theirs.in_proj_bias.copy_(ours.in_proj.bias)
    theirs.out_proj.weight.copy_(ours.out_proj.weight)
    theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_ffn_from_torch(ours: OurLayer, theirs: TorchLayer) -> None:
    net = ours.ffn.net
    assert isinstance(net, FeedForward)
    for name in ("linear1", "linear2"):
        dst, src = getattr(net, name), getattr(theirs, name)
        dst.weight.copy_(src.weight)
        _copy_bias(dst.bias, src.bias)


def _copy_ffn_to_torch(theirs: TorchLayer, ffn: FeedForward) -> None:
    for name in ("linear1", "linear2"):
        dst, src = getattr(theirs, name), getattr(ffn, name)
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


def _copy_norms(dst_layer: nn.Module, src_layer: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        dst, src = getattr(dst_layer, name), getattr(src_layer, name)
        dst.weight.copy_(src.weight)
        _copy_bias(dst.bias, src.bias)
