"""What the server knows about each loaded model: its card for /v1/models, its form of
input, its special tokens, and lookups that answer 404 / 409 in the API's words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_core import tokenizer
from server.errors import ApiError
from server.model_repository import ModelEntry
from server.schemas import Limits, ModelCard
from server.settings import ServerSettings

KIND_WORDS = {
    "regression": "a regression model (POST /v1/predict)",
    "autoregressive": "an autoregressive model (POST /v1/generate, /v1/speculative, sessions)",
    "encoder_decoder": "an encoder-decoder model (POST /v1/seq2seq)",
}


@dataclass(frozen=True)
class ServedModel:
    entry: ModelEntry
    card: ModelCard

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def config(self) -> Any:
        return self.entry.config

    @property
    def kind(self) -> str:
        return str(self.config.kind)

    @property
    def uses_tokens(self) -> bool:
        return bool(self.config.uses_tokens)

    @property
    def byte_level(self) -> bool:
        return self.card.tokenizer == "bytes"

    @property
    def special_tokens(self) -> dict[str, int]:
        return self.card.special_tokens or {}

    @property
    def source_pad_to(self) -> int | None:
        """Width a seq2seq model expects its source padded to with its PAD token (its
        card's `serving.source_pad_to`; None: sources go in as they are)."""
        serving = (self.entry.card or {}).get("serving") or {}
        width = serving.get("source_pad_to")
        return int(width) if isinstance(width, int) and "pad" in self.special_tokens else None

    def default_stop(self) -> list[int]:
        eos = self.special_tokens.get("eos")
        return [eos] if eos is not None else []


def _special_tokens(entry: ModelEntry, byte_level: bool) -> dict[str, int] | None:
    if byte_level:
        return {"bos": tokenizer.BOS, "eos": tokenizer.EOS, "pad": tokenizer.PAD}
    card = entry.card or {}
    tokens = card.get("special_tokens")
    if isinstance(tokens, dict) and all(isinstance(v, int) for v in tokens.values()):
        return dict(tokens)
    return None


def build_catalog(
    entries: dict[str, ModelEntry], settings: ServerSettings, devices: list[str]
) -> dict[str, ServedModel]:
    catalog = {}
    for name, entry in entries.items():
        info = entry.describe()
        cfg = entry.config
        byte_level = bool(cfg.uses_tokens and cfg.vocab_size == tokenizer.VOCAB_SIZE)
        fields = {k: v for k, v in info.items() if k in ModelCard.model_fields}
        fields.update(
            id=name,
            tokenizer="bytes" if byte_level else None,
            devices=devices,
            limits=Limits(
                max_seq_len=cfg.max_seq_len,
                max_new_tokens=min(settings.max_new_tokens, cfg.max_seq_len - 1),
                max_batch_size=settings.max_batch_size,
                max_body_bytes=settings.max_body_bytes,
            ),
            special_tokens=_special_tokens(entry, byte_level),
        )
        served = ServedModel(entry, ModelCard(**fields))
        served.card.source_pad_to = served.source_pad_to
        catalog[name] = served
    return catalog


def find_model(
    catalog: dict[str, ServedModel], name: str, kind: str | None = None, param: str = "model"
) -> ServedModel:
    served = catalog.get(name)
    if served is None:
        raise ApiError(
            404,
            "model_not_found",
            f"model {name!r} is not served here; GET /v1/models lists {sorted(catalog)}",
            param,
        )
    if kind is not None and served.kind != kind:
        raise ApiError(
            409,
            "wrong_model_kind",
            f"{name!r} is {KIND_WORDS.get(served.kind, served.kind)}; this route needs "
            f"{KIND_WORDS.get(kind, kind)}",
            param,
        )
    return served
