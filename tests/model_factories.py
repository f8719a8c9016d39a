"""Small models for tests, one per kind and input form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from model_core.configs import FFNConfig
from model_core.transformer_model import (
    AutoregressiveTransformerModel,
    EncoderDecoder,
    TransformerModel,
)

D, H, LATENT = 32, 4, 64


def ffn(use_moe: bool = False) -> FFNConfig:
    return FFNConfig(embed_dim=D, latent_dim=LATENT, use_moe=use_moe, num_experts=4, topk=2)


def ar_model(attention: str = "mha", vocab: int | None = None, **kw: Any):
    args: dict[str, Any] = dict(
        input_dim=3, output_dim=3, embed_dim=D, ffn_latent_dim=LATENT, num_layers=2,
        num_heads=H, attention_type=attention, vocab_size=vocab, max_seq_len=64, ffn_config=ffn(),
    )  # fmt: skip
    args.update(kw)
    return AutoregressiveTransformerModel(**args).eval()


def seq2seq_model(attention: str = "mha", vocab: int | None = None, **kw: Any):
    args: dict[str, Any] = dict(
        input_dim=3, output_dim=3, embed_dim=D, ffn_latent_dim=LATENT, num_encoder_layers=2,
        num_decoder_layers=2, num_heads=H, attention_type=attention, vocab_size=vocab,
        max_seq_len=64, ffn_config=ffn(),
    )  # fmt: skip
    args.update(kw)
    return EncoderDecoder(**args).eval()


def regression_model(attention: str = "mha", **kw: Any):
    args: dict[str, Any] = dict(
        input_dim=3, output_dim=2, embed_dim=D, ffn_latent_dim=LATENT, num_layers=2,
        num_heads=H, attention_type=attention, max_seq_len=64, ffn_config=ffn(),
    )  # fmt: skip
    args.update(kw)
    return TransformerModel(**args).eval()


def inputs(vocab: int | None, batch: int, length: int) -> Tensor:
    if vocab:
        return torch.randint(0, vocab, (batch, length))
    return torch.randn(batch, length, 3)
