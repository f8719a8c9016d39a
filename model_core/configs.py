"""Configuration dataclasses: the feed-forward block, decoding, and a whole model.

A `TransformerModelConfig` is the checkpoint's `config.json` and builds its model
(`config.build()`); every field is also a keyword argument of the model classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

AttentionType = Literal["mha", "mqa", "gqa"]
ModelKind = Literal["regression", "autoregressive", "encoder_decoder"]
ATTENTION_TYPES: tuple[str, ...] = ("mha", "mqa", "gqa")
MODEL_KINDS: tuple[str, ...] = ("regression", "autoregressive", "encoder_decoder")


@dataclass
class FFNConfig:
    """The feed-forward block of every layer: a dense two-layer MLP or a mixture of experts.

    `capacity` is the most tokens one expert takes from one training batch; tokens over
    it go to the overflow expert (see `model_core.moe.MOE`). `alpha` weights the
    load-balancing loss, `topk` is how many experts each token is sent to.
    """

    embed_dim: int = 64
    latent_dim: int = 256
    use_moe: bool = False
    num_experts: int = 8
    capacity: int = 64
    alpha: float = 0.01
    topk: int = 1

    def validate(self) -> None:
        if self.embed_dim <= 0 or self.latent_dim <= 0:
            raise ValueError(
                f"FFNConfig: embed_dim ({self.embed_dim}) and latent_dim ({self.latent_dim}) "
                "must be positive"
            )
        if self.use_moe:
            if self.num_experts < 1:
                raise ValueError(f"FFNConfig: num_experts must be >= 1, got {self.num_experts}")
            if not 1 <= self.topk <= self.num_experts:
                raise ValueError(
                    f"FFNConfig: topk must be between 1 and num_experts ({self.num_experts}), "
                    f"got {self.topk}"
                )
            if self.capacity < 1:
                raise ValueError(f"FFNConfig: capacity must be >= 1, got {self.capacity}")


@dataclass
class AutoregressiveDecodeConfig:
    """How the stateful convenience API caches: `use_kv_cache` turns it on,
    `expanding_context` picks the expanding cache (True) or the sliding window (False)."""

    expanding_context: bool = True
    use_kv_cache: bool = False


@dataclass
class TransformerModelConfig:
    """Everything needed to build a model; saved as a checkpoint's `config.json`.

    `kind` is derived from `autoregressive_mode` / `num_decoder_layers` when not given.
    With `vocab_size` set the model reads token ids `[B, T]` and returns logits over the
    vocabulary (`output_dim` is then unused); otherwise it reads values `[B, T, input_dim]`.
    `sliding_window` is the window of the sliding cache (defaults to `max_seq_len`).
    """

    name: str = "model"
    input_dim: int = 1
    embed_dim: int = 64
    ffn_latent_dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    output_dim: int = 1
    vocab_size: int | None = None
    num_groups: int | None = None
    attention_type: AttentionType = "mha"
    apply_causal_mask: bool = False
    autoregressive_mode: bool = False
    max_seq_len: int = 512
    sliding_window: int | None = None
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    dropout: float = 0.0
    kind: ModelKind | None = None
    ffn_config: FFNConfig | None = None
    decode_config: AutoregressiveDecodeConfig = field(default_factory=AutoregressiveDecodeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.ffn_config, dict):
            self.ffn_config = FFNConfig(**self.ffn_config)
        if isinstance(self.decode_config, dict):
            self.decode_config = AutoregressiveDecodeConfig(**self.decode_config)
        if self.kind is None:
            if self.num_decoder_layers is not None:
                self.kind = "encoder_decoder"
            elif self.autoregressive_mode or self.vocab_size is not None:
                self.kind = "autoregressive"
            else:
                self.kind = "regression"
        if self.ffn_config is None:
            self.ffn_config = FFNConfig(embed_dim=self.embed_dim, latent_dim=self.ffn_latent_dim)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        from model_core.attention.gqa import resolve_num_groups

        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}"
            )
        for name in ("input_dim", "embed_dim", "ffn_latent_dim", "num_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        resolve_num_groups(self.attention_type, self.embed_dim, self.num_heads, self.num_groups)
        assert self.ffn_config is not None
        if self.ffn_config.embed_dim != self.embed_dim:
            raise ValueError(
                f"ffn_config.embed_dim ({self.ffn_config.embed_dim}) must equal embed_dim "
                f"({self.embed_dim})"
            )
        self.ffn_config.validate()

    @property
    def uses_tokens(self) -> bool:
        return self.vocab_size is not None

    @property
    def window(self) -> int:
        """The sliding window's length in tokens."""
        return self.sliding_window or self.max_seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def build(self) -> Any:
        """Build the model this config describes (weights freshly initialised)."""
        from model_core.transformer_model import build_model

        return build_model(self)
