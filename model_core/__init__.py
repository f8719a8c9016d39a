"""model_core: the transformer library under kvserve (torch + safetensors only)."""

from model_core.configs import AutoregressiveDecodeConfig, FFNConfig, TransformerModelConfig
from model_core.kv_cache import KVCache
from model_core.transformer_model import (
    AutoregressiveTransformerModel,
    EncoderDecoder,
    TransformerModel,
)

__all__ = [
    "AutoregressiveDecodeConfig",
    "AutoregressiveTransformerModel",
    "EncoderDecoder",
    "FFNConfig",
    "KVCache",
    "TransformerModel",
    "TransformerModelConfig",
]
