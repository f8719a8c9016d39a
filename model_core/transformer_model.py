"""The three model kinds: regression (pooled), autoregressive, encoder-decoder.

Each is built from a `TransformerModelConfig` or from its fields as keyword arguments
(`use_kv_cache` / `expanding_context` go to `decode_config`). Padding is on the right and
given as `lengths` `(B,)`: padded positions never influence real ones.

Caches are explicit: `new_cache()` makes one, `step()` runs new tokens through it, so one
model serves many sequences. With `use_kv_cache=True` the model also keeps a cache of its
own (the specification's stateful API): `model(x, expanding_context=...)`, `reset_cache()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model_core.configs import AutoregressiveDecodeConfig, TransformerModelConfig
from model_core.decoder import TransformerDecoderLayer
from model_core.embedding import InputEmbedding, valid_mask
from model_core.encoder import TransformerEncoderLayer
from model_core.feed_forward_block import FeedForwardBlock
from model_core.kv_cache import DEFAULT_SLIDING_SLACK, CachePlan, KVCache
from model_core.module_calls import linear
from model_core.stateful_cache import StatefulCache


def _make_config(
    kind: str, config: TransformerModelConfig | None, kwargs: dict[str, Any]
) -> TransformerModelConfig:
    decode = {k: kwargs.pop(k) for k in ("use_kv_cache", "expanding_context") if k in kwargs}
    if config is None:
        defaults = {"regression": {}, "autoregressive": {"apply_causal_mask": True}}
        config = TransformerModelConfig(**{**defaults.get(kind, {}), **kwargs, "kind": kind})
        config.decode_config = AutoregressiveDecodeConfig(
            expanding_context=decode.get("expanding_context", True),
            use_kv_cache=decode.get("use_kv_cache", False),
        )
    elif kwargs or decode:
        raise TypeError("pass either a config or keyword arguments, not both")
    if config.kind != kind:
        raise ValueError(f"config describes a {config.kind!r} model, not {kind!r}")
    config.validate()
    return config


class _Model(nn.Module):
    config: TransformerModelConfig

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the MoE load-balancing losses of the last forward (0 without MoE)."""
        blocks = [m for m in self.modules() if isinstance(m, FeedForwardBlock) and m.is_moe]
        total = torch.zeros((), device=next(self.parameters()).device)
        for block in blocks:
            total = total + block.take_aux_loss()
        return total

    def moe_stats(self) -> list[dict[str, object]]:
        """Routing statistics of each MoE layer's last forward."""
        from model_core.moe import MOE

        return [
            m.last_stats.to_dict() for m in self.modules() if isinstance(m, MOE) and m.last_stats
        ]

    @property
    def use_kv_cache(self) -> bool:
        return self.config.decode_config.use_kv_cache

    def reset_cache(self) -> None:
        """Forget the stateful cache (the next call starts a new sequence)."""
        self._stateful.reset()


class TransformerModel(_Model):
    """Regression: encoder layers, mean over the real tokens, projection to `output_dim`.

    `(B, T, input_dim)` (or token ids `(B, T)` with `vocab_size`) -> `(B, output_dim)`.
    `use_kv_cache` is accepted for the specification's signature; a pooled model reads
    its whole input at once, so it has nothing to cache.
    """

    def __init__(self, config: TransformerModelConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = _make_config("regression", config, kwargs)
        self.embedding = InputEmbedding(
            cfg.input_dim, cfg.embed_dim, cfg.vocab_size, cfg.max_seq_len
        )
        self.layers = nn.ModuleList(
            _encoder_layer(cfg, cfg.apply_causal_mask) for _ in range(cfg.num_layers)
        )
        self.output_proj = nn.Linear(cfg.embed_dim, cfg.output_dim)
        self._stateful = StatefulCache()

    def forward(self, x: Tensor, lengths: Tensor | None = None, **_: Any) -> Tensor:
        valid = valid_mask(x.shape[0], x.shape[1], lengths, x.device)
        pad = None if lengths is None else ~valid
        h = self.embedding(x)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad)
        weights = valid.to(h.dtype)[..., None]  # (B, T, 1)
        pooled = (h * weights).sum(dim=1) / weights.sum(dim=1)
        return self.output_proj(pooled)


class AutoregressiveTransformerModel(_Model):
    """Causal decoder-only model: `(B, T)` tokens -> logits `(B, T, vocab_size)`, or
    `(B, T, input_dim)` values -> `(B, T, output_dim)`."""

    def __init__(self, config: TransformerModelConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = _make_config("autoregressive", config, kwargs)
        self.embedding = InputEmbedding(
            cfg.input_dim, cfg.embed_dim, cfg.vocab_size, cfg.max_seq_len
        )
        self.layers = nn.ModuleList(_encoder_layer(cfg, True) for _ in range(cfg.num_layers))
        self.output_proj = nn.Linear(cfg.embed_dim, cfg.vocab_size or cfg.output_dim)
        self._stateful = StatefulCache()

    @property
    def num_groups(self) -> int:
        return self.layers[0].self_attn.num_groups if len(self.layers) else 1

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        expanding_context: bool | None = None,
    ) -> Tensor:
        """The whole sequence at once; with `use_kv_cache=True`, the stateful cached path
        (`expanding_context` True: expanding cache, False: sliding window)."""
        if self.use_kv_cache:
            return self._stateful.run(self, x, expanding_context)
        return self.forward_full(x, lengths)

    def forward_full(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The whole (right-padded) sequence at once, without any cache."""
        valid = valid_mask(x.shape[0], x.shape[1], lengths, x.device)
        pad = None if lengths is None else ~valid
        h = self.embedding(x)
        for layer in self.layers:
            # The padding mask keeps padded tokens out of MoE routing; for attention the
            # causal mask already hides (right) padding from real tokens.
            h = layer(h, is_causal=True, src_key_padding_mask=pad)
        return self.output_proj(h)

    def new_cache(
        self,
        batch_size: int,
        capacity: int | None = None,
        sliding: bool = False,
        slack: int = DEFAULT_SLIDING_SLACK,
    ) -> KVCache:
        """An empty cache for `batch_size` sequences: expanding with `capacity` slots
        (default `max_seq_len`), or a sliding window of `config.window` tokens."""
        cfg = self.config
        param = next(self.parameters())
        window = cfg.window if sliding else None
        slots = (cfg.window + slack) if sliding else (capacity or cfg.max_seq_len)
        head_dim = cfg.embed_dim // cfg.num_heads
        return KVCache(
            cfg.num_layers, batch_size, self.num_groups, head_dim, slots, window,
            param.device, param.dtype,
        )  # fmt: skip

    def step(self, x: Tensor, cache: KVCache, lengths: Tensor | None = None) -> Tensor:
        """Run new tokens `x` (`(B, T)` or `(B, T, input_dim)`) through the cache; row b
        has `lengths[b]` real tokens (default T; 0 leaves the row untouched). Returns the
        outputs at the new positions `(B, T, out)`."""
        outputs = []
        for chunk, valid, plan in _chunks(x, cache, lengths):
            h = self.embedding(chunk, plan.positions)
            for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
                h = layer.step(h, layer_cache, plan, valid)
            outputs.append(linear(self.output_proj, h))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def generate_next_token(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The greedy next output after each row's last real position: a token id
        `(B, 1)` for token models, a value `(B, 1, output_dim)` otherwise."""
        from model_core.generation import next_from_output

        with torch.no_grad():
            out = self.forward_full(x, lengths)
        return next_from_output(self, out, lengths)

    def generate(self, x: Tensor, max_new_tokens: int, **sampling: Any) -> Tensor:
        """Prefill `x`, then decode `max_new_tokens` with the KV cache; see
        `model_core.generation.generate` for the sampling options."""
        from model_core.generation import generate

        return generate(self, x, max_new_tokens, **sampling)


@dataclass
class EncoderDecoderCache:
    """Decoding state of an encoder-decoder: the decoder's self-attention cache and the
    encoder output's K/V for each decoder layer, projected once per source."""

    self_attention: KVCache
    memory_kv: list[tuple[Tensor, Tensor]]
    memory_padding_mask: Tensor | None  # (B, S) True = padding

    @property
    def lengths(self) -> Tensor:
        return self.self_attention.lengths


class EncoderDecoder(_Model):
    """Encoder over the source, causal decoder with cross-attention over the target."""

    def __init__(self, config: TransformerModelConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            kwargs.setdefault("num_decoder_layers", kwargs.get("num_layers", 2))
            kwargs.setdefault("num_encoder_layers", kwargs.get("num_layers", 2))
            kwargs.setdefault("apply_causal_mask", True)
        self.config = cfg = _make_config("encoder_decoder", config, kwargs)
        n_enc = cfg.num_encoder_layers if cfg.num_encoder_layers is not None else cfg.num_layers
        n_dec = cfg.num_decoder_layers if cfg.num_decoder_layers is not None else cfg.num_layers
        groups = _groups(cfg)
        self.src_embedding = InputEmbedding(
            cfg.input_dim, cfg.embed_dim, cfg.vocab_size, cfg.max_seq_len
        )
        self.tgt_embedding = InputEmbedding(
            cfg.input_dim, cfg.embed_dim, cfg.vocab_size, cfg.max_seq_len
        )
        self.encoder_layers = nn.ModuleList(_encoder_layer(cfg, False) for _ in range(n_enc))
        assert cfg.ffn_config is not None
        self.decoder_layers = nn.ModuleList(
            TransformerDecoderLayer(
                cfg.embed_dim, cfg.num_heads, cfg.ffn_config, groups, True, cfg.dropout
            )
            for _ in range(n_dec)
        )
        self.output_proj = nn.Linear(cfg.embed_dim, cfg.vocab_size or cfg.output_dim)
        self._stateful = StatefulCache()

    def encode(
        self, source: Tensor, lengths: Tensor | None = None, expanding_context: bool | None = None
    ) -> Tensor:
        """source -> encoder output `(B, S, D)`. The encoder is not causal and reads the
        whole source at once; `expanding_context` is accepted and has no effect."""
        pad = None if lengths is None else ~valid_mask(*source.shape[:2], lengths, source.device)
        h = self.src_embedding(source)
        for layer in self.encoder_layers:
            h = layer(h, src_key_padding_mask=pad)
        return h

    def decode(
        self,
        target: Tensor,
        encoder_output: Tensor,
        expanding_context: bool | None = None,
        target_lengths: Tensor | None = None,
        source_lengths: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced decoding of `target` over `encoder_output`; with
        `use_kv_cache=True`, the stateful cached path."""
        mem_pad = _padding(encoder_output, source_lengths)
        if self.use_kv_cache:
            return self._stateful.run(self, target, expanding_context, encoder_output, mem_pad)
        tgt_pad = _padding(target, target_lengths)
        h = self.tgt_embedding(target)
        for layer in self.decoder_layers:
            h = layer(
                h,
                encoder_output,
                tgt_key_padding_mask=tgt_pad,
                memory_key_padding_mask=mem_pad,
                tgt_is_causal=True,
            )
        return self.output_proj(h)

    def forward(
        self,
        source: Tensor,
        target: Tensor,
        source_lengths: Tensor | None = None,
        target_lengths: Tensor | None = None,
    ) -> Tensor:
        memory = self.encode(source, source_lengths)
        return self.decode(
            target, memory, target_lengths=target_lengths, source_lengths=source_lengths
        )

    def new_cache(
        self,
        encoder_output: Tensor,
        source_lengths: Tensor | None = None,
        capacity: int | None = None,
        sliding: bool = False,
        slack: int = DEFAULT_SLIDING_SLACK,
    ) -> EncoderDecoderCache:
        """Decoding state for the sources encoded in `encoder_output` `(B, S, D)`."""
        cfg = self.config
        window = cfg.window if sliding else None
        slots = (cfg.window + slack) if sliding else (capacity or cfg.max_seq_len)
        kv = KVCache(
            len(self.decoder_layers), encoder_output.shape[0], _groups(cfg),
            cfg.embed_dim // cfg.num_heads, slots, window,
            encoder_output.device, encoder_output.dtype,
        )  # fmt: skip
        memory_kv = [layer.cross_attn.project_kv(encoder_output) for layer in self.decoder_layers]
        return EncoderDecoderCache(kv, memory_kv, _padding(encoder_output, source_lengths))

    def step(
        self, target: Tensor, cache: EncoderDecoderCache, lengths: Tensor | None = None
    ) -> Tensor:
        """New target tokens `(B, T)` / `(B, T, input_dim)` through the decoder cache."""
        outputs = []
        for chunk, valid, plan in _chunks(target, cache.self_attention, lengths):
            h = self.tgt_embedding(chunk, plan.positions)
            for layer, layer_cache, mem in zip(
                self.decoder_layers, cache.self_attention.layers, cache.memory_kv, strict=True
            ):
                h = layer.step(h, layer_cache, plan, mem, cache.memory_padding_mask, valid)
            outputs.append(self.output_proj(h))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def generate(
        self, source: Tensor, start: Tensor, max_new_tokens: int, **sampling: Any
    ) -> Tensor:
        """Encode `source`, then decode from the target prefix `start`; see
        `model_core.generation.generate_seq2seq`."""
        from model_core.generation import generate_seq2seq

        return generate_seq2seq(self, source, start, max_new_tokens, **sampling)


def _chunks(
    x: Tensor, cache: KVCache, lengths: Tensor | None
) -> Iterator[tuple[Tensor, Tensor | None, CachePlan]]:
    """Split new inputs into steps the cache can take; reserve each step's slots.
    Yields (chunk, valid `(B, t)` or None when every token is real, plan)."""
    t = x.shape[1]
    for start in range(0, t, cache.max_step):
        chunk = x[:, start : start + cache.max_step]
        n = chunk.shape[1]
        valid = None
        if lengths is not None:
            valid = torch.arange(n, device=x.device) < (lengths.to(x.device)[:, None] - start)
        yield chunk, valid, cache.plan(n, valid)


def _groups(cfg: TransformerModelConfig) -> int:
    from model_core.attention.gqa import resolve_num_groups

    return resolve_num_groups(cfg.attention_type, cfg.embed_dim, cfg.num_heads, cfg.num_groups)


def _encoder_layer(cfg: TransformerModelConfig, causal: bool) -> TransformerEncoderLayer:
    assert cfg.ffn_config is not None
    return TransformerEncoderLayer(
        cfg.embed_dim, cfg.num_heads, cfg.ffn_config, _groups(cfg), causal, cfg.dropout
    )


def _padding(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    return None if lengths is None else ~valid_mask(x.shape[0], x.shape[1], lengths, x.device)


MODEL_CLASSES: dict[str, type[_Model]] = {
    "regression": TransformerModel,
    "autoregressive": AutoregressiveTransformerModel,
    "encoder_decoder": EncoderDecoder,
}


def build_model(config: TransformerModelConfig) -> _Model:
    """The model of `config.kind`, freshly initialised."""
    assert config.kind is not None
    return MODEL_CLASSES[config.kind](config)
