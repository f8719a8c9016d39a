"""model_core.interop: our layers with PyTorch's weights compute PyTorch's layers.

The oracle is PyTorch itself (`nn.TransformerEncoderLayer` / `TransformerDecoderLayer`
/ `TransformerEncoder`), in eval mode with dropout 0, with and without autograd (without
it, and in eval, PyTorch takes its fused "fast path")."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from model_core.attention.gqa import GroupQueryAttention
from model_core.configs import FFNConfig
from model_core.decoder import TransformerDecoderLayer
from model_core.encoder import TransformerEncoderLayer
from model_core.interop import (
    from_torch_decoder_layer,
    from_torch_encoder_layer,
    to_torch_decoder_layer,
    to_torch_encoder_layer,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}
SIZES = [(16, 4, 32), (24, 3, 40), (32, 8, 64), (8, 1, 16)]  # d_model, nhead, dim_feedforward
SHAPES = [(1, 1), (2, 5), (3, 9)]  # batch, seq_len
GRAD_MODES: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "grad": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


def _randomize(module: nn.Module) -> nn.Module:
    """Non-trivial values for every parameter (PyTorch starts biases and LayerNorms at
    0/1, which would hide a bias or norm that is not copied)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module


def torch_encoder(d: int, h: int, ff: int, **kw: object) -> nn.TransformerEncoderLayer:
    args: dict[str, object] = {"dropout": 0.0, "batch_first": True, **kw}
    return _randomize(nn.TransformerEncoderLayer(d, h, ff, **args)).eval()  # type: ignore[return-value]


def torch_decoder(d: int, h: int, ff: int, **kw: object) -> nn.TransformerDecoderLayer:
    args: dict[str, object] = {"dropout": 0.0, "batch_first": True, **kw}
    return _randomize(nn.TransformerDecoderLayer(d, h, ff, **args)).eval()  # type: ignore[return-value]


def padding_mask(lengths: list[int], seq_len: int) -> Tensor:
    """(B, T) bool, True at padding (PyTorch's convention), right padding."""
    return torch.arange(seq_len)[None, :] >= torch.tensor(lengths)[:, None]


def some_lengths(batch: int, seq_len: int) -> list[int]:
    """Row 0 full, the others shorter (at least 1 real token each)."""
    return [seq_len] + [max(1, seq_len - 2 * b) for b in range(1, batch)]


def bool_causal(seq_len: int) -> Tensor:
    return torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)  # True = not allowed


@contextlib.contextmanager
def grad_mode(name: str) -> Iterator[None]:
    with GRAD_MODES[name]():
        yield


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_encoder_layer_matches_torch(
    size: tuple[int, int, int], shape: tuple[int, int], mode: str
) -> None:
    theirs = torch_encoder(*size)
    ours = from_torch_encoder_layer(theirs)
    x = torch.randn(*shape, size[0])
    with grad_mode(mode):
        torch.testing.assert_close(ours(x), theirs(x), **TOL)


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("mask_kind", ["float", "bool", "float_is_causal"])
@pytest.mark.parametrize("size", SIZES[:3])
def test_encoder_layer_causal_mask(size: tuple[int, int, int], mask_kind: str, mode: str) -> None:
    theirs = torch_encoder(*size)
    ours = from_torch_encoder_layer(theirs)
    t = 7
    x = torch.randn(3, t, size[0])
    if mask_kind == "bool":
        mask = bool_causal(t)
    else:
        mask = nn.Transformer.generate_square_subsequent_mask(t)
    is_causal = mask_kind == "float_is_causal"
    with grad_mode(mode):
        expected = theirs(x, src_mask=mask, is_causal=is_causal)
        got = ours(x, src_mask=mask, is_causal=is_causal)
    torch.testing.assert_close(got, expected, **TOL)
    # The mask is really causal: a position does not see later ones.
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(ours(x2, src_mask=mask)[:, :-1], got[:, :-1], **TOL)


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("size", SIZES[:3])
def test_encoder_layer_key_padding_mask(
    size: tuple[int, int, int], causal: bool, mode: str
) -> None:
    theirs = torch_encoder(*size)
    ours = from_torch_encoder_layer(theirs)
    b, t = 4, 9
    lengths = some_lengths(b, t)
    pad = padding_mask(lengths, t)
    mask = bool_causal(t) if causal else None
    x = torch.randn(b, t, size[0])
    with grad_mode(mode):
        expected = theirs(x, src_mask=mask, src_key_padding_mask=pad)
        got = ours(x, src_mask=mask, src_key_padding_mask=pad)
    # PyTorch's fast path may leave padded positions zero: compare the real ones.
    real = ~pad
    torch.testing.assert_close(got[real], expected[real], **TOL)
    for row, n in enumerate(lengths):
        alone_x = x[row : row + 1, :n]
        alone_mask = None if mask is None else mask[:n, :n]
        with torch.no_grad():
            alone_ours = ours(alone_x, src_mask=alone_mask)
            alone_theirs = theirs(alone_x, src_mask=alone_mask)
        torch.testing.assert_close(got[row, :n], alone_ours[0], **TOL)
        torch.testing.assert_close(got[row, :n], alone_theirs[0], **TOL)


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_decoder_layer_matches_torch(
    size: tuple[int, int, int], shape: tuple[int, int], mode: str
) -> None:
    theirs = torch_decoder(*size)
    ours = from_torch_decoder_layer(theirs)
    b, t = shape
    tgt = torch.randn(b, t, size[0])
    memory = torch.randn(b, t + 3, size[0])
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(t)
    with grad_mode(mode):
        torch.testing.assert_close(ours(tgt, memory), theirs(tgt, memory), **TOL)
        torch.testing.assert_close(
            ours(tgt, memory, tgt_mask=tgt_mask, tgt_is_causal=True),
            theirs(tgt, memory, tgt_mask=tgt_mask, tgt_is_causal=True),
            **TOL,
        )


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("mask_dtype", ["bool", "float"])
@pytest.mark.parametrize("size", SIZES[:3])
def test_decoder_layer_with_all_masks(
    size: tuple[int, int, int], mask_dtype: str, mode: str
) -> None:
    theirs = torch_decoder(*size)
    ours = from_torch_decoder_layer(theirs)
    b, t, s = 4, 7, 10
    tgt = torch.randn(b, t, size[0])
    memory = torch.randn(b, s, size[0])
    tgt_lengths, mem_lengths = some_lengths(b, t), some_lengths(b, s)[::-1]
    tgt_pad, mem_pad = padding_mask(tgt_lengths, t), padding_mask(mem_lengths, s)
    if mask_dtype == "bool":
        tgt_mask = bool_causal(t)
    else:
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(t)
    kwargs = {
        "tgt_mask": tgt_mask,
        "tgt_key_padding_mask": tgt_pad,
        "memory_key_padding_mask": mem_pad,
    }
    with grad_mode(mode):
        expected = theirs(tgt, memory, **kwargs)
        got = ours(tgt, memory, **kwargs)
    real = ~tgt_pad
    torch.testing.assert_close(got[real], expected[real], **TOL)
    for row in range(b):
        n, m = tgt_lengths[row], mem_lengths[row]
        with torch.no_grad():
            alone = ours(
                tgt[row : row + 1, :n], memory[row : row + 1, :m], tgt_mask=tgt_mask[:n, :n]
            )
        torch.testing.assert_close(got[row, :n], alone[0], **TOL)


def test_decoder_layer_memory_mask() -> None:
    theirs = torch_decoder(16, 4, 32)
    ours = from_torch_decoder_layer(theirs)
    tgt, memory = torch.randn(2, 5, 16), torch.randn(2, 6, 16)
    memory_mask = torch.rand(5, 6) < 0.4
    memory_mask[:, 0] = False  # every query keeps at least one key
    with torch.no_grad():
        torch.testing.assert_close(
            ours(tgt, memory, memory_mask=memory_mask),
            theirs(tgt, memory, memory_mask=memory_mask),
            **TOL,
        )


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("masks", ["none", "causal", "padding", "causal+padding"])
def test_encoder_stack_matches_torch(masks: str, mode: str) -> None:
    d, h, ff, layers = 32, 4, 48, 3
    stack = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, batch_first=True), layers
    )
    _randomize(stack).eval()  # after the deep copies, so each layer differs
    ours = [from_torch_encoder_layer(layer) for layer in stack.layers]
    b, t = 3, 8
    x = torch.randn(b, t, d)
    mask = nn.Transformer.generate_square_subsequent_mask(t) if "causal" in masks else None
    lengths = some_lengths(b, t)
    pad = padding_mask(lengths, t) if "padding" in masks else None
    with grad_mode(mode):
        expected = stack(x, mask=mask, src_key_padding_mask=pad, is_causal=mask is not None)
        got = x
        for layer in ours:
            got = layer(got, src_mask=mask, src_key_padding_mask=pad)
    real = torch.ones(b, t, dtype=torch.bool) if pad is None else ~pad
    torch.testing.assert_close(got[real], expected[real], **TOL)


def test_gradients_match_in_training_mode() -> None:
    theirs = torch_encoder(16, 4, 32).train()
    ours = from_torch_encoder_layer(theirs)
    assert ours.training
    x1 = torch.randn(2, 6, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    mask = bool_causal(6)
    theirs(x1, src_mask=mask).square().sum().backward()
    ours(x2, src_mask=mask).square().sum().backward()
    assert x1.grad is not None and x2.grad is not None
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)


def test_settings_are_carried_over() -> None:
    theirs = nn.TransformerEncoderLayer(
        16, 2, 24, dropout=0.25, layer_norm_eps=1e-3, batch_first=True, dtype=torch.float64
    )
    ours = from_torch_encoder_layer(theirs)
    assert ours.training
    assert ours.norm1.eps == ours.norm2.eps == 1e-3
    assert ours.dropout1.p == ours.dropout2.p == 0.25
    assert ours.ffn.net.dropout.p == 0.25
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert not ours.self_attn.apply_causal_mask
    assert ours.self_attn.num_groups == 2
    dec = from_torch_decoder_layer(
        nn.TransformerDecoderLayer(16, 2, 24, dropout=0.1, batch_first=True).eval()
    )
    assert not dec.training
    assert not dec.self_attn.apply_causal_mask
    assert dec.dropout3.p == 0.1


def test_layers_without_bias() -> None:
    enc = torch_encoder(16, 4, 32, bias=False)
    dec = torch_decoder(16, 4, 32, bias=False)
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_torch_encoder_layer(enc)(x), enc(x), **TOL)
        torch.testing.assert_close(from_torch_decoder_layer(dec)(x, memory), dec(x, memory), **TOL)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"batch_first": False}, "batch_first=True"),
        ({"norm_first": True}, "norm_first=False"),
        ({"activation": "gelu"}, "relu"),
        ({"activation": torch.tanh}, "relu"),
    ],
)
def test_unsupported_torch_layers_are_refused(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"dropout": 0.0, "batch_first": True, **kwargs}
    with pytest.raises(ValueError, match=reason):
        from_torch_encoder_layer(nn.TransformerEncoderLayer(16, 4, 32, **args))
    with pytest.raises(ValueError, match=reason):
        from_torch_decoder_layer(nn.TransformerDecoderLayer(16, 4, 32, **args))


def test_relu_module_activation_is_accepted() -> None:
    theirs = torch_encoder(16, 4, 32, activation=nn.ReLU())
    with torch.no_grad():
        x = torch.randn(2, 4, 16)
        torch.testing.assert_close(from_torch_encoder_layer(theirs)(x), theirs(x), **TOL)


def test_wrong_layer_type_is_refused() -> None:
    with pytest.raises(TypeError):
        from_torch_encoder_layer(nn.TransformerDecoderLayer(16, 4, 32, batch_first=True))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        from_torch_decoder_layer(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True))  # type: ignore[arg-type]


def test_back_to_torch() -> None:
    ffn = FFNConfig(embed_dim=16, latent_dim=32)
    enc = _randomize(TransformerEncoderLayer(16, 4, ffn)).eval()
    dec = _randomize(TransformerDecoderLayer(16, 4, ffn, apply_causal_mask=False)).eval()
    assert isinstance(enc, TransformerEncoderLayer) and isinstance(dec, TransformerDecoderLayer)
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    mask = bool_causal(5)
    with torch.no_grad():
        t_enc, t_dec = to_torch_encoder_layer(enc), to_torch_decoder_layer(dec)
        assert not t_enc.training and t_enc.self_attn.batch_first
        torch.testing.assert_close(t_enc(x, src_mask=mask), enc(x, src_mask=mask), **TOL)
        torch.testing.assert_close(
            t_dec(x, memory, tgt_mask=mask), dec(x, memory, tgt_mask=mask), **TOL
        )
        # ... and back again: the weights survive both conversions exactly.
        again = from_torch_encoder_layer(t_enc)
        for (name, a), b in zip(enc.state_dict().items(), again.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_back_to_torch_refuses_what_torch_cannot_express() -> None:
    gqa = TransformerEncoderLayer(16, 4, FFNConfig(embed_dim=16, latent_dim=32), num_groups=2)
    with pytest.raises(ValueError, match="GQA/MQA"):
        to_torch_encoder_layer(gqa)
    moe = TransformerEncoderLayer(
        16, 4, FFNConfig(embed_dim=16, latent_dim=32, use_moe=True, num_experts=2)
    )
    with pytest.raises(ValueError, match="mixture of experts"):
        to_torch_encoder_layer(moe)
    assert isinstance(gqa.self_attn, GroupQueryAttention)


# ---- The rarer PyTorch mask forms: float padding masks, per-head masks, memory_is_causal --


def test_float_key_padding_mask() -> None:
    theirs, dec = torch_encoder(16, 4, 32), torch_decoder(16, 4, 32)
    ours, ours_dec = from_torch_encoder_layer(theirs), from_torch_decoder_layer(dec)
    x, memory = torch.randn(3, 6, 16), torch.randn(3, 5, 16)
    pad = padding_mask(some_lengths(3, 6), 6)
    mem_pad = padding_mask(some_lengths(3, 5), 5)
    fpad = torch.zeros(3, 6).masked_fill(pad, float("-inf"))
    fmem_pad = torch.zeros(3, 5).masked_fill(mem_pad, float("-inf"))
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        got = ours(x, src_mask=mask, src_key_padding_mask=fpad)
        expected = theirs(x, src_mask=mask, src_key_padding_mask=fpad)
        torch.testing.assert_close(got[~pad], expected[~pad], **TOL)
        kwargs = {"tgt_mask": mask, "tgt_key_padding_mask": fpad}
        got = ours_dec(x, memory, memory_key_padding_mask=fmem_pad, **kwargs)
        expected = dec(x, memory, memory_key_padding_mask=fmem_pad, **kwargs)
        torch.testing.assert_close(got[~pad], expected[~pad], **TOL)


def test_per_head_attention_mask() -> None:
    """PyTorch also takes a `[B * nhead, T, S]` mask."""
    theirs = torch_encoder(16, 4, 32)
    ours = from_torch_encoder_layer(theirs)
    x = torch.randn(2, 5, 16)
    mask = torch.rand(2 * 4, 5, 5) < 0.4
    mask[..., 0] = False  # every query keeps a key
    with torch.no_grad():
        torch.testing.assert_close(ours(x, src_mask=mask), theirs(x, src_mask=mask), **TOL)


def test_decoder_accepts_memory_is_causal() -> None:
    theirs = torch_decoder(16, 4, 32)
    ours = from_torch_decoder_layer(theirs)
    tgt, memory = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(tgt, memory, memory_is_causal=False),
            theirs(tgt, memory, memory_is_causal=False),
            **TOL,
        )
