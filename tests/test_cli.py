"""The `kvserve` command line: recipes listed in --help, clear errors."""

from __future__ import annotations

import pytest

from model_core.recipes import RECIPES
from server.cli import build_parser, main


def test_train_help_lists_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in RECIPES:
        assert name in out


def test_unknown_recipe_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'no-such-recipe'" in err and "sine-regressor" in err


def test_every_recipe_module_has_train_and_evaluate() -> None:
    for recipe in RECIPES.values():
        assert callable(recipe.train) and callable(recipe.evaluate)
