"""text-lm-moe: text-lm's byte-level language model with a mixture-of-experts FFN.

Model: AutoregressiveTransformerModel, vocab 259, d=256, 4 layers, 8 query heads in 2 K/V
groups (GQA), max_seq_len 512; every FFN is an MoE of 8 experts (latent 64 each, so that
the bundled checkpoints stay small), top-2 routing, plus the overflow expert.

Capacity: a training batch is BATCH x SEQ_LEN = 2048 tokens, 4096 top-2 assignments, 512
per expert when perfectly balanced; the capacity is set to exactly that (capacity factor
1.0), so any imbalance sends assignments to the overflow expert during training. Capacity
applies in training mode only (see model_core.moe); inference routes every token.

Data and metric as text-lm (stdlib source, PSF licence, split by file; held-out bits per
byte). The card also holds routing statistics measured on held-out text in training mode
(batches of the training shape, no gradient): assignments per expert and the overflow
fraction, per layer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_core import checkpoint
from model_core.configs import FFNConfig, TransformerModelConfig
from model_core.recipes.text_corpus import held_out_windows, load_corpus
from model_core.recipes.text_lm import (
    BATCH,  # the training batch: capacity below is per batch
    EVAL_SEED,
    SEQ_LEN,
    held_out_bpb,
    train_card,
    train_language_model,
)
from model_core.tokenizer import VOCAB_SIZE
from model_core.train import TrainSettings

NUM_EXPERTS = 8
TOPK = 2
CAPACITY_FACTOR = 1.0
CAPACITY = int(CAPACITY_FACTOR * BATCH * SEQ_LEN * TOPK / NUM_EXPERTS)  # 512
SETTINGS = TrainSettings(steps=400, lr=2.5e-3, warmup=40, weight_decay=0.01)
STATS_BATCHES = 4
STATS_SEED = 50_000  # held-out batches for the routing statistics


def model_config() -> TransformerModelConfig:
    d, latent = 256, 64
    return TransformerModelConfig(
        name="text-lm-moe",
        vocab_size=VOCAB_SIZE,
        embed_dim=d,
        ffn_latent_dim=latent,
        num_layers=4,
        num_heads=8,
        num_groups=2,
        attention_type="gqa",
        max_seq_len=512,
        ffn_config=FFNConfig(
            embed_dim=d,
            latent_dim=latent,
            use_moe=True,
            num_experts=NUM_EXPERTS,
            capacity=CAPACITY,
            alpha=0.01,
            topk=TOPK,
        ),
    )


@torch.no_grad()
def routing_stats(model: nn.Module, seed: int = STATS_SEED) -> dict[str, Any]:
    """Per layer: assignments per expert and overflow fraction, summed over STATS_BATCHES
    held-out batches of the training shape, run in training mode (capacity active)."""
    inputs, _ = held_out_windows(load_corpus().held_out, STATS_BATCHES * BATCH, SEQ_LEN, seed)
    was_training = model.training
    model.train()
    per_layer: list[dict[str, Any]] = []
    try:
        for i in range(STATS_BATCHES):
            model(inputs[i * BATCH : (i + 1) * BATCH])
            for j, s in enumerate(model.moe_stats()):
                if len(per_layer) <= j:
                    per_layer.append({"tokens_per_expert": [0] * NUM_EXPERTS, "overflow": 0})
                layer = per_layer[j]
                counts = s["tokens_per_expert"]
                assert isinstance(counts, list)
                layer["tokens_per_expert"] = [
                    a + int(b) for a, b in zip(layer["tokens_per_expert"], counts, strict=True)
                ]
                layer["overflow"] += int(s["overflow_tokens"])  # type: ignore[call-overload]
    finally:
        model.train(was_training)
    total = STATS_BATCHES * BATCH * SEQ_LEN * TOPK
    for layer in per_layer:
        layer["overflow_fraction"] = layer["overflow"] / total
    return {
        "layers": per_layer,
        "overflow_fraction": sum(x["overflow"] for x in per_layer) / (total * len(per_layer)),
        "setup": f"{STATS_BATCHES} held-out batches of {BATCH} x {SEQ_LEN} bytes (seed {seed}), "
        f"training mode, capacity {CAPACITY} per expert per batch, {total} assignments "
        "per layer",
    }


def train(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = model_config().build()
    settings = TrainSettings(**{**SETTINGS.__dict__, "seed": seed})
    start = time.perf_counter()
    stats = train_language_model(model, settings, "text-lm-moe")
    metrics = {
        "held_out_bits_per_byte": held_out_bpb(model),
        "held_out_windows": f"64 x {SEQ_LEN} bytes, seed {EVAL_SEED}",
        "routing": routing_stats(model),
        "train_seconds": stats["train_seconds"],
        "total_seconds": time.perf_counter() - start,
    }
    card = train_card(
        "next-byte prediction (byte-level language model) on Python source, MoE FFN",
        model,
        settings,
        {
            "batch": BATCH,
            "seq_len": SEQ_LEN,
            "capacity_factor": CAPACITY_FACTOR,
            "capacity": CAPACITY,
            "aux_loss_weight": settings.aux_loss_weight,
        },
        stats,
        metrics,
    )
    checkpoint.save(model, out_dir, card=card)
    return metrics


def evaluate(path: Path) -> dict[str, Any]:
    model = checkpoint.load(path)
    routing = routing_stats(model, seed=STATS_SEED + 1)
    return {
        "held_out_bits_per_byte": held_out_bpb(model, seed=EVAL_SEED + 2),
        "overflow_fraction": routing["overflow_fraction"],
        "tokens_per_expert": [layer["tokens_per_expert"] for layer in routing["layers"]],
    }
