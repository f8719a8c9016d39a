"""A small, generic training loop (AdamW, warmup + cosine decay, gradient clipping),
used by the recipes that make the bundled demo checkpoints.

A recipe supplies the model, a function drawing one batch from a seeded generator and a
loss function; `train_model` runs a fixed number of steps with a progress bar (tqdm when
installed, a plain line otherwise) and returns what it measured.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Batch = Any


@dataclass
class TrainSettings:
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    aux_loss_weight: float = 1.0  # multiplies the model's MoE load-balancing loss
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr * this


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` (a tenth by default)."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    floor = settings.min_lr_ratio
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class _Progress:
    """tqdm if installed, else a line rewritten on stderr."""

    def __init__(self, total: int, desc: str) -> None:
        try:
            from tqdm import tqdm

            self._bar: Any = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self._bar = None
        self.total, self.desc, self.done = total, desc, 0

    def update(self, loss: float) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.done % max(1, self.total // 20) == 0 or self.done == self.total:
            print(
                f"\r{self.desc}: {self.done}/{self.total} loss {loss:.4f}", end="", file=sys.stderr
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


def train_model(
    model: nn.Module,
    draw_batch: Callable[[torch.Generator], Batch],
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    settings: TrainSettings,
    desc: str = "training",
) -> dict[str, float]:
    """Train `model` in place for `settings.steps` steps; returns the mean loss of the last
    tenth of the steps and the wall time. The model's MoE aux loss (if any) is added."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay}],
        lr=settings.lr,
        weight_decay=0.0,
    )
    model.train()
    progress = _Progress(settings.steps, desc)
    tail: list[float] = []
    start = time.perf_counter()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, step)
        batch = draw_batch(generator)
        loss = loss_fn(model, batch)
        aux = getattr(model, "aux_loss", None)
        total = loss + settings.aux_loss_weight * aux if isinstance(aux, Tensor) else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        if step >= settings.steps - max(1, settings.steps // 10):
            tail.append(value)
        progress.update(value)
    progress.close()
    model.eval()
    return {"final_loss": sum(tail) / len(tail), "train_seconds": time.perf_counter() - start}
