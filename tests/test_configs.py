"""Configs build models, both construction styles agree, bad values say what's wrong."""

from __future__ import annotations

import pytest
import torch

from model_core.configs import FFNConfig, TransformerModelConfig
from model_core.transformer_model import (
    AutoregressiveTransformerModel,
    EncoderDecoder,
    TransformerModel,
)


def test_config_builds_the_model_of_its_kind() -> None:
    base = dict(embed_dim=32, ffn_latent_dim=64, num_heads=4, max_seq_len=32)
    assert isinstance(TransformerModelConfig(**base).build(), TransformerModel)
    cfg = TransformerModelConfig(**base, autoregressive_mode=True, vocab_size=50)
    assert isinstance(cfg.build(), AutoregressiveTransformerModel)
    cfg = TransformerModelConfig(**base, num_encoder_layers=1, num_decoder_layers=2)
    model = cfg.build()
    assert isinstance(model, EncoderDecoder) and len(model.decoder_layers) == 2


def test_config_and_keywords_give_the_same_model() -> None:
    kwargs = dict(
        input_dim=2, embed_dim=32, ffn_latent_dim=64, num_layers=2, num_heads=4,
        vocab_size=30, num_groups=2, attention_type="gqa", max_seq_len=32,
    )  # fmt: skip
    by_kwargs = AutoregressiveTransformerModel(**kwargs)
    by_config = AutoregressiveTransformerModel(
        TransformerModelConfig(**kwargs, kind="autoregressive", apply_causal_mask=True)
    )
    by_config.load_state_dict(by_kwargs.state_dict())
    x = torch.randint(0, 30, (2, 5))
    torch.testing.assert_close(by_kwargs(x), by_config(x))
    assert by_kwargs.config.to_dict() == by_config.config.to_dict()


def test_dict_round_trip() -> None:
    cfg = TransformerModelConfig(
        embed_dim=32, ffn_latent_dim=64, vocab_size=9,
        ffn_config=FFNConfig(embed_dim=32, latent_dim=64, use_moe=True, topk=2),
    )  # fmt: skip
    again = TransformerModelConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (dict(attention_type="flash"), "attention_type"),
        (dict(embed_dim=30), "divisible"),
        (dict(kind="vision"), "kind"),
        (dict(dropout=1.5), "dropout"),
        (dict(ffn_config=FFNConfig(embed_dim=16)), "ffn_config.embed_dim"),
        (dict(ffn_config=FFNConfig(embed_dim=32, use_moe=True, topk=9)), "topk"),
    ],
)
def test_invalid_configs_name_the_field(change: dict, fragment: str) -> None:
    cfg = TransformerModelConfig(**{**dict(embed_dim=32, ffn_latent_dim=64, num_heads=4), **change})
    with pytest.raises(ValueError, match=fragment):
        cfg.validate()


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown config fields"):
        TransformerModelConfig.from_dict({"embed_dim": 32, "wings": 2})


def test_value_model_rejects_token_ids_with_a_clear_message() -> None:
    model = TransformerModel(input_dim=3, embed_dim=32, ffn_latent_dim=64, num_heads=4)
    with pytest.raises(ValueError, match="no vocabulary"):
        model(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, seq_len, 3\]"):
        model(torch.zeros(2, 5, 4))
