"""text-lm: a byte-level GQA language model trained on the Python standard library's source.

Model: AutoregressiveTransformerModel, vocab 259 (bytes + BOS/EOS/PAD), d=256, 6 layers,
8 query heads in 2 K/V groups (GQA), FFN latent 768, max_seq_len 512. It is the target of
the speculative-decoding demo (text-lm-draft is distilled from it), so it is made deep
enough that one of its decode steps costs several draft steps.

Data: see `model_core.recipes.text_corpus` (stdlib `.py` files, PSF licence, split by
file). Training: next-byte cross-entropy on random 256-byte windows of the train files.
Metric: bits per byte (mean cross-entropy / ln 2) on held-out files' windows drawn from a
seed different from training's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core import checkpoint
from model_core.configs import FFNConfig, TransformerModelConfig
from model_core.recipes.text_corpus import (
    bits_per_byte,
    held_out_windows,
    load_corpus,
    random_windows,
)
from model_core.tokenizer import VOCAB_SIZE
from model_core.train import TrainSettings, train_model

SEQ_LEN = 256
BATCH = 8
SETTINGS = TrainSettings(steps=400, lr=2.5e-3, warmup=40, weight_decay=0.01)
EVAL_WINDOWS = 64
EVAL_SEED = 20_000  # held-out windows; never the training seed


def model_config() -> TransformerModelConfig:
    d, latent = 256, 768
    return TransformerModelConfig(
        name="text-lm",
        vocab_size=VOCAB_SIZE,
        embed_dim=d,
        ffn_latent_dim=latent,
        num_layers=6,
        num_heads=8,
        num_groups=2,
        attention_type="gqa",
        max_seq_len=512,
        ffn_config=FFNConfig(embed_dim=d, latent_dim=latent),
    )


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def held_out_bpb(model: nn.Module, seed: int = EVAL_SEED, windows: int = EVAL_WINDOWS) -> float:
    inputs, targets = held_out_windows(load_corpus().held_out, windows, SEQ_LEN, seed)
    return bits_per_byte(model, inputs, targets)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_card(
    task: str,
    model: nn.Module,
    settings: TrainSettings,
    extra_settings: dict[str, Any],
    stats: dict[str, float],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The card.json common to the text-lm recipes."""
    return {
        "task": task,
        "data": load_corpus().describe(),
        "training": {
            "steps": settings.steps,
            "lr": settings.lr,
            "warmup": settings.warmup,
            "weight_decay": settings.weight_decay,
            "grad_clip": settings.grad_clip,
            "seed": settings.seed,
            **extra_settings,
            "final_train_loss": stats["final_loss"],
            "wall_seconds": stats["train_seconds"],
            "torch_threads": torch.get_num_threads(),
        },
        "model": {"params": param_count(model), **model.config.to_dict()},
        "metrics": metrics,
    }


def train_language_model(model: nn.Module, settings: TrainSettings, desc: str) -> dict[str, float]:
    """Next-byte training on random windows of the training corpus (shared with text-lm-moe)."""
    corpus = load_corpus()
    return train_model(
        model,
        lambda g: random_windows(corpus.train, BATCH, SEQ_LEN, g),
        lm_loss,
        settings,
        desc=desc,
    )


def train(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = model_config().build()
    settings = TrainSettings(**{**SETTINGS.__dict__, "seed": seed})
    start = time.perf_counter()
    stats = train_language_model(model, settings, "text-lm")
    metrics = {
        "held_out_bits_per_byte": held_out_bpb(model),
        "held_out_windows": f"{EVAL_WINDOWS} x {SEQ_LEN} bytes, seed {EVAL_SEED}",
        "train_seconds": stats["train_seconds"],
        "total_seconds": time.perf_counter() - start,
    }
    card = train_card(
        "next-byte prediction (byte-level language model) on Python source",
        model,
        settings,
        {"batch": BATCH, "seq_len": SEQ_LEN},
        stats,
        metrics,
    )
    checkpoint.save(model, out_dir, card=card)
    return metrics


def evaluate(path: Path) -> dict[str, Any]:
    model = checkpoint.load(path)
    seed = EVAL_SEED + 1
    return {
        "held_out_bits_per_byte": held_out_bpb(model, seed=seed),
        "held_out_windows": f"{EVAL_WINDOWS} x {SEQ_LEN} bytes, seed {seed}",
    }
