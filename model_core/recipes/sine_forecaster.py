"""sine-forecaster: continues a noisy multi-sine signal, one value per step.

Data (`sine_data.multi_sines`): each signal is the sum of 2 or 3 sines (amplitudes
uniform in [0.2, 1], frequencies uniform in [0.02, 0.1] cycles per step, phases uniform
in [0, 2*pi)) plus N(0, 0.05^2) noise.

Model: an autoregressive value model (`input_dim = output_dim = 1`, causal), trained with
teacher forcing: from the noisy prefix it predicts the next step's clean value at every
position from 16 on (MSE). It forecasts by `model.generate(context, 32)`, which
prefills the context into the KV cache and feeds each output back as the next input.
`max_seq_len` = 160 covers the longest context (128) plus the 32-step horizon.

Evaluation: held-out signals with a context of 64-128 noisy steps (right-padded, passed
as `lengths`); the 32 generated values are compared with the clean continuation, and the
mean squared error at each horizon step is set against that of the naive forecast (the
last observed value repeated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model_core import checkpoint
from model_core.recipes import sine_data
from model_core.train import TrainSettings, train_model
from model_core.transformer_model import AutoregressiveTransformerModel

NAME = "sine-forecaster"
CONTEXT_RANGE = (64, 128)
HORIZON = 32
SEQ_LEN = CONTEXT_RANGE[1] + HORIZON
STEPS = 4500
BATCH = 32
LR = 2e-3
EVAL_SEED = 20_261_130  # held-out data: a different seed from any training seed used here
EVAL_SIGNALS = 200
LOSS_FROM = 16  # positions before this have too little context to be scored


def build_model() -> AutoregressiveTransformerModel:
    return AutoregressiveTransformerModel(
        name=NAME,
        input_dim=1,
        output_dim=1,
        embed_dim=64,
        ffn_latent_dim=128,
        num_layers=3,
        num_heads=4,
        max_seq_len=SEQ_LEN,
    )


def draw_batch(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(inputs, targets) for teacher forcing: the noisy steps 0..T-2 and the clean steps
    1..T-1."""
    data = sine_data.multi_sines(BATCH, SEQ_LEN, generator)
    return data.noisy[:, :-1], data.clean[:, 1:]


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Next-step MSE from position `LOSS_FROM` on (earlier ones have too little context)."""
    inputs, targets = batch
    return nn.functional.mse_loss(model(inputs)[:, LOSS_FROM:], targets[:, LOSS_FROM:])


def forecast_errors(
    model: nn.Module, seed: int = EVAL_SEED, signals: int = EVAL_SIGNALS
) -> tuple[Tensor, Tensor]:
    """Squared errors `(signals, HORIZON)` of the model's generated forecast and of the
    naive last-value forecast against the clean continuation, on held-out signals whose
    contexts are uniform in 64..128 steps."""
    generator = torch.Generator().manual_seed(seed)
    data = sine_data.multi_sines(signals, SEQ_LEN, generator)
    lengths = torch.randint(CONTEXT_RANGE[0], CONTEXT_RANGE[1] + 1, (signals,), generator=generator)
    rows = torch.arange(signals)
    steps = lengths[:, None] + torch.arange(HORIZON)  # (N, H) absolute positions
    truth = data.clean[rows[:, None], steps, 0]
    context = data.noisy[:, : CONTEXT_RANGE[1]].clone()
    context[torch.arange(CONTEXT_RANGE[1]) >= lengths[:, None]] = 0.0  # right padding
    with torch.no_grad():
        forecast = model.generate(context, HORIZON, lengths=lengths)[..., 0]  # (N, H)
    naive = data.noisy[rows, lengths - 1, 0][:, None].expand(-1, HORIZON)
    return (forecast - truth) ** 2, (naive - truth) ** 2


def measure(model: nn.Module, seed: int = EVAL_SEED, signals: int = EVAL_SIGNALS) -> dict[str, Any]:
    model_err, naive_err = forecast_errors(model, seed, signals)
    model_step, naive_step = model_err.mean(dim=0), naive_err.mean(dim=0)
    return {
        "eval_signals": signals,
        "eval_seed": seed,
        "horizon": HORIZON,
        "mse_model": round(float(model_err.mean()), 5),
        "mse_naive": round(float(naive_err.mean()), 5),
        "mse_ratio_naive_over_model": round(float(naive_err.mean() / model_err.mean()), 2),
        "mse_model_per_step": [round(float(v), 5) for v in model_step],
        "mse_naive_per_step": [round(float(v), 5) for v in naive_step],
    }


def train(out_dir: Path, seed: int = 0, steps: int = STEPS) -> dict[str, Any]:
    """Train from `seed`, save the checkpoint to `out_dir`, return the held-out metrics."""
    torch.manual_seed(seed)
    model = build_model()
    settings = TrainSettings(steps=steps, lr=LR, warmup=100, weight_decay=0.01, seed=seed)
    result = train_model(model, draw_batch, _loss, settings, desc=NAME)
    wall = result["train_seconds"]
    metrics = {**measure(model), "final_train_loss": round(result["final_loss"], 5)}
    card = {
        "task": (
            "forecasting: an autoregressive value model ([B, T, 1] -> next value at each "
            f"step); model.generate(context, {HORIZON}) continues a noisy multi-sine signal "
            f"from a context of {CONTEXT_RANGE[0]}-{CONTEXT_RANGE[1]} steps"
        ),
        "data": {
            "source": "synthetic, generated by model_core/recipes/sine_data.py (no licence needed)",
            "signal": "sum of 2 or 3 sines A_i*sin(2*pi*f_i*t + phi_i) + N(0, sigma^2)",
            "amplitude": list(sine_data.MULTI_AMPLITUDE_RANGE),
            "frequency_cycles_per_step": list(sine_data.MULTI_FREQUENCY_RANGE),
            "phase_radians": [0.0, "2*pi"],
            "noise_sigma": sine_data.MULTI_NOISE_STD,
            "train_length": SEQ_LEN,
        },
        "training": {
            "steps": steps,
            "lr": LR,
            "schedule": "AdamW, 100 warmup steps, cosine decay to lr/10",
            "batch": BATCH,
            "loss": "teacher forcing: MSE of the next clean value from the noisy prefix",
            "seed": seed,
            "wall_seconds": round(wall, 1),
            "threads": torch.get_num_threads(),
        },
        "model": {
            "kind": "autoregressive",
            "params": sum(p.numel() for p in model.parameters()),
            "layers": 3,
            "embed_dim": 64,
            "heads": 4,
            "ffn_latent_dim": 128,
            "max_seq_len": SEQ_LEN,
        },
        "metrics": {
            **metrics,
            "held_out": f"{EVAL_SIGNALS} signals from seed {EVAL_SEED}; target is the clean "
            "continuation; naive = last observed (noisy) value repeated",
        },
    }
    checkpoint.save(model, out_dir, card=card)
    return {**metrics, "train_seconds": round(wall, 1)}


def evaluate(path: Path) -> dict[str, Any]:
    """Re-measure the held-out forecast errors of the checkpoint at `path`."""
    return measure(checkpoint.load(path))
