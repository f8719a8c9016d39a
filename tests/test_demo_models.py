"""Every bundled demo checkpoint loads, has its card, and all fit the size budget."""

from __future__ import annotations

import json

from model_core.checkpoint import load, read_card
from model_core.recipes import RECIPES, bundled_dir

SIZE_BUDGET = 30 * 1024 * 1024  # all bundled checkpoints together


def test_every_recipe_has_a_bundled_checkpoint_with_a_card() -> None:
    for name in RECIPES:
        path = bundled_dir() / name
        model = load(path)
        card = read_card(path)
        assert card is not None, f"{name}: no card.json"
        for key in ("task", "data", "training", "metrics"):
            assert key in card, f"{name}: card.json lacks {key!r}"
        assert model.config.kind in ("regression", "autoregressive", "encoder_decoder")
        json.dumps(card)


def test_bundled_checkpoints_fit_the_size_budget() -> None:
    total = sum(f.stat().st_size for f in bundled_dir().rglob("*") if f.is_file())
    assert total < SIZE_BUDGET, f"bundled checkpoints take {total / 2**20:.1f} MiB"
