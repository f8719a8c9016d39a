"""Training recipes for the bundled demo checkpoints, one module each.

A recipe trains from a fixed seed and writes a checkpoint directory (config.json,
model.safetensors, card.json with task, data, training settings and measured metrics);
`evaluate` re-measures the quality figures of a checkpoint. `kvserve train RECIPE` and
`kvserve eval RECIPE` call them; `RECIPES` lists them by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    module: str  # model_core.recipes.<module> with train(out_dir, seed) and evaluate(path)

    def _load(self) -> Any:
        return importlib.import_module(f"model_core.recipes.{self.module}")

    @property
    def train(self) -> Callable[[Path, int], dict[str, Any]]:
        return self._load().train

    @property
    def evaluate(self) -> Callable[[Path], dict[str, Any]]:
        return self._load().evaluate


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("sine-regressor", "noisy sine -> amplitude, frequency, phase", "sine_regressor"),
        Recipe("sine-forecaster", "continues a noisy multi-sine signal", "sine_forecaster"),
        Recipe(
            "digits-seq2seq",
            "digit string -> its reversal, =, its digit sum",
            "digits_seq2seq",
        ),
        Recipe("text-lm", "byte-level GQA language model on Python's stdlib", "text_lm"),
        Recipe("text-lm-draft", "1-layer MQA draft distilled from text-lm", "text_lm_draft"),
        Recipe("text-lm-moe", "text-lm with an 8-expert top-2 MoE FFN", "text_lm_moe"),
    )
}


def bundled_dir() -> Path:
    """Where the bundled checkpoints live (installed with the package)."""
    import demo_models

    return Path(demo_models.__file__).resolve().parent
