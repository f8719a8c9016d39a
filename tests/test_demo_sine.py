"""The bundled sine demos: they load, have the right shapes, and keep their quality on
fresh held-out signals (seeds different from training's and from the recipes' own
evaluation); the recipes' `train` runs end to end at tiny scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_core import checkpoint
from model_core.recipes import RECIPES, bundled_dir, sine_data, sine_forecaster, sine_regressor
from model_core.transformer_model import AutoregressiveTransformerModel, TransformerModel

REGRESSOR = bundled_dir() / "sine-regressor"
FORECASTER = bundled_dir() / "sine-forecaster"


def test_regressor_loads_and_shapes() -> None:
    model = checkpoint.load(REGRESSOR)
    assert isinstance(model, TransformerModel)
    with torch.no_grad():
        out = model(torch.zeros(3, 40, 1), lengths=torch.tensor([40, 16, 25]))
        single = model(torch.zeros(1, 256, 1))
    assert out.shape == (3, 3)
    assert single.shape == (1, 3)
    card = checkpoint.read_card(REGRESSOR)
    assert card is not None
    assert card["metrics"]["r2_phase"] >= 0.95


def test_regressor_quality_in_natural_units() -> None:
    """R^2 >= 0.9 on each parameter over 100 fresh signals; outputs are natural units
    (the normalisation is baked in), so the raw predictions are compared."""
    model = checkpoint.load(REGRESSOR)
    metrics = sine_regressor.measure(model, seed=777, signals=100)
    for name in sine_regressor.PARAM_NAMES:
        assert metrics[f"r2_{name}"] >= 0.9, metrics


def test_regressor_padding_does_not_change_outputs() -> None:
    model = checkpoint.load(REGRESSOR)
    batch = sine_data.single_sines(2, torch.Generator().manual_seed(5), torch.tensor([50, 20]))
    with torch.no_grad():
        padded = model(batch.values, lengths=batch.lengths)
        alone = model(batch.values[1:, :20])
    torch.testing.assert_close(padded[1:], alone, rtol=1e-4, atol=1e-4)


def test_forecaster_loads_and_generates() -> None:
    model = checkpoint.load(FORECASTER)
    assert isinstance(model, AutoregressiveTransformerModel)
    assert model.config.max_seq_len >= sine_forecaster.CONTEXT_RANGE[1] + sine_forecaster.HORIZON
    with torch.no_grad():
        assert model(torch.zeros(2, 10, 1)).shape == (2, 10, 1)
        out = model.generate(torch.zeros(2, 64, 1), sine_forecaster.HORIZON)
    assert out.shape == (2, sine_forecaster.HORIZON, 1)
    assert torch.isfinite(out).all()


def test_forecaster_beats_naive() -> None:
    model = checkpoint.load(FORECASTER)
    model_err, naive_err = sine_forecaster.forecast_errors(model, seed=778, signals=40)
    assert model_err.shape == naive_err.shape == (40, sine_forecaster.HORIZON)
    assert float(naive_err.mean() / model_err.mean()) >= 3.0


@pytest.mark.parametrize("name", ["sine-regressor", "sine-forecaster"])
def test_recipe_trains_at_tiny_scale(name: str, tmp_path: Path) -> None:
    module = {"sine-regressor": sine_regressor, "sine-forecaster": sine_forecaster}[name]
    assert RECIPES[name].module == module.__name__.rsplit(".", 1)[1]
    metrics = module.train(tmp_path / name, seed=1, steps=2)
    card = checkpoint.read_card(tmp_path / name)
    assert card is not None
    assert card["training"]["steps"] == 2
    assert card["model"]["params"] > 0
    assert set(metrics) >= {"train_seconds", "eval_seed"}
    assert checkpoint.load(tmp_path / name).config.name == name
