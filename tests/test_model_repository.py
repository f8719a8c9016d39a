"""server.model_repository: scanning checkpoints, reporting broken ones by name, loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model_core.checkpoint import CheckpointError, save
from model_core.recipes import RECIPES, bundled_dir
from server.model_repository import (
    ModelEntry,
    ModelNotFoundError,
    ModelRepository,
    validate_model_name,
)
from tests.model_factories import ar_model, ffn, regression_model, seq2seq_model

VOCAB = 13


def write_good(root: Path, name: str = "good") -> nn.Module:
    model = ar_model("gqa", vocab=VOCAB, num_groups=2)
    save(model, root / name, card={"task": "test task", "metrics": {"acc": 0.5}})
    return model


@pytest.fixture
def repo_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    return root


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "text-lm", "Model_2.v1", "9", "x" * 64])
def test_valid_names_pass(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "bad name", ".hidden", "-x", "_x", "a/b", "a\\b", "a..b", "x" * 65, "a\n", "é"]
)
def test_invalid_names_raise_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        validate_model_name(name)


# ---- bundled demos -------------------------------------------------------------------------


def test_bundled_demos_scan_without_errors_and_describe_their_configs() -> None:
    scan = ModelRepository().scan()
    assert scan.errors == {}
    assert list(scan.entries) == sorted(RECIPES)
    for name, entry in scan.entries.items():
        # Oracle: the checkpoint's own config.json, read directly.
        raw = json.loads((bundled_dir() / name / "config.json").read_text())
        info = entry.describe()
        json.dumps(info)  # served as JSON
        assert info["id"] == name
        assert info["kind"] == raw["kind"]
        assert info["vocab_size"] == raw["vocab_size"]
        assert info["input_form"] == ("tokens" if raw["vocab_size"] else "values")
        assert info["max_seq_len"] == raw["max_seq_len"]
        assert info["embed_dim"] == raw["embed_dim"]
        assert info["attention_type"] == raw["attention_type"]
        assert info["task"] == json.loads((bundled_dir() / name / "card.json").read_text())["task"]
    text = scan.entries["text-lm"].describe()
    assert (text["kind"], text["input_form"], text["vocab_size"]) == (
        "autoregressive",
        "tokens",
        259,
    )
    assert (text["num_groups"], text["num_layers"], text["moe"]) == (2, 6, None)
    assert (text["input_dim"], text["output_dim"]) == (None, None)
    assert scan.entries["text-lm-draft"].describe()["num_groups"] == 1  # mqa
    assert scan.entries["text-lm-moe"].describe()["moe"] == {"num_experts": 8, "top_k": 2}
    regressor = scan.entries["sine-regressor"].describe()
    assert (regressor["kind"], regressor["input_form"]) == ("regression", "values")
    assert (regressor["input_dim"], regressor["output_dim"], regressor["num_groups"]) == (1, 3, 4)
    digits = scan.entries["digits-seq2seq"].describe()
    assert (digits["kind"], digits["vocab_size"]) == ("encoder_decoder", 14)
    assert (digits["num_encoder_layers"], digits["num_decoder_layers"]) == (1, 2)


def test_bundled_parameter_counts_match_the_loaded_modules() -> None:
    repo = ModelRepository()
    for name in ("sine-regressor", "digits-seq2seq", "text-lm-moe"):
        model = repo.load(name)
        expected = sum(p.numel() for p in model.parameters())
        assert repo.entry(name).describe()["parameters"] == expected


def test_pycache_in_the_bundled_package_is_ignored(repo_root: Path) -> None:
    write_good(repo_root)
    (repo_root / "__pycache__").mkdir()
    (repo_root / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (repo_root / "__init__.py").write_text("")
    scan = ModelRepository(repo_root).scan()
    assert (list(scan.entries), scan.errors) == (["good"], {})


# ---- a temporary repository with broken checkpoints -----------------------------------------


def test_broken_checkpoints_are_reported_by_name_and_the_good_one_loads(
    tmp_path: Path, repo_root: Path
) -> None:
    good = write_good(repo_root)
    write_good(repo_root, "bad-config")
    (repo_root / "bad-config" / "config.json").write_text('{"format_version": 1, "kind": "x"')
    write_good(repo_root, "bad-field")
    config = json.loads((repo_root / "bad-field" / "config.json").read_text())
    config["num_heads"] = 5  # embed_dim 32 is not divisible by 5
    (repo_root / "bad-field" / "config.json").write_text(json.dumps(config))
    write_good(repo_root, "no-weights")
    (repo_root / "no-weights" / "model.safetensors").unlink()
    write_good(repo_root, "no-config")
    (repo_root / "no-config" / "config.json").unlink()
    write_good(repo_root, "corrupt")
    weights = repo_root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    write_good(repo_root, "garbage")
    (repo_root / "garbage" / "model.safetensors").write_bytes(b"not safetensors" * 10)
    write_good(repo_root, "pickle")
    (repo_root / "pickle" / "weights.pt").write_bytes(b"\x80\x04.")
    write_good(repo_root, "bad name")
    write_good(tmp_path / "outside", "elsewhere")
    (repo_root / "linked-out").symlink_to(tmp_path / "outside" / "elsewhere")
    (repo_root / "dangling").symlink_to(repo_root / "nowhere")
    (repo_root / ".hidden").mkdir()
    (repo_root / "notes.txt").write_text("a plain file")

    repo = ModelRepository(repo_root)
    scan = repo.scan()
    assert list(scan.entries) == ["good"]
    assert set(scan.errors) == {
        "bad-config", "bad-field", "no-weights", "no-config", "corrupt", "garbage",
        "pickle", "bad name", "linked-out", "dangling",
    }  # fmt: skip
    why = scan.errors
    assert "not a readable JSON file" in why["bad-config"]
    assert "num_heads" in why["bad-field"]
    assert "model.safetensors" in why["no-weights"] and "missing" in why["no-weights"]
    assert "config.json" in why["no-config"]
    assert "safetensors" in why["corrupt"] and "re-save" in why["corrupt"]
    assert "safetensors" in why["garbage"]
    assert "pickle" in why["pickle"]
    assert "invalid model name" in why["bad name"]
    assert "outside the model repository" in why["linked-out"]
    assert "does not exist" in why["dangling"]

    loaded = repo.load("good")
    torch.testing.assert_close(loaded.state_dict(), good.state_dict(), rtol=0, atol=0)
    models, errors = repo.load_all()
    assert list(models) == ["good"]
    assert set(errors) == set(scan.errors)


def test_a_symlink_inside_the_root_is_an_alias_and_one_to_a_file_is_ignored(
    repo_root: Path,
) -> None:
    write_good(repo_root)
    (repo_root / "alias").symlink_to(repo_root / "good")
    (repo_root / "readme-link").symlink_to(repo_root / "good" / "config.json")
    scan = ModelRepository(repo_root).scan()
    assert (list(scan.entries), scan.errors) == (["alias", "good"], {})
    assert scan.entries["alias"].path == (repo_root / "good").resolve()


def test_a_file_symlinked_out_of_the_root_is_never_read(tmp_path: Path, repo_root: Path) -> None:
    write_good(tmp_path / "outside", "real")
    write_good(repo_root, "sneaky")
    for file_name in ("config.json", "model.safetensors"):
        (repo_root / "sneaky" / file_name).unlink()
        (repo_root / "sneaky" / file_name).symlink_to(tmp_path / "outside" / "real" / file_name)
    repo = ModelRepository(repo_root)
    assert "outside the model repository" in repo.scan().errors["sneaky"]
    with pytest.raises(CheckpointError, match="outside the model repository"):
        repo.load("sneaky")


def test_load_all_reports_weights_that_do_not_match_the_config(repo_root: Path) -> None:
    write_good(repo_root)
    write_good(repo_root, "mismatched")
    # A readable safetensors file (so the scan passes) holding another model's tensors.
    other = regression_model().state_dict()
    save_file(
        {k: v.contiguous() for k, v in other.items()},
        repo_root / "mismatched" / "model.safetensors",
    )
    repo = ModelRepository(repo_root)
    assert set(repo.scan().entries) == {"good", "mismatched"}
    models, errors = repo.load_all(["good", "mismatched", "missing", "bad name"])
    assert list(models) == ["good"]
    assert set(errors) == {"mismatched", "missing", "bad name"}
    assert "does not match the model" in errors["mismatched"]
    assert "no model 'missing'" in errors["missing"] and "good" in errors["missing"]
    assert "invalid model name" in errors["bad name"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ar_model("mqa", vocab=VOCAB, ffn_config=ffn(use_moe=True)),
        lambda: seq2seq_model("gqa", num_groups=2),
        lambda: regression_model(),
    ],
    ids=["ar-moe-mqa", "seq2seq-gqa-values", "regression"],
)
def test_parameter_count_from_the_header_equals_the_modules(repo_root: Path, make) -> None:
    model = make()
    save(model, repo_root / "m")
    entry = ModelRepository(repo_root).entry("m")
    assert entry.num_parameters == sum(p.numel() for p in model.parameters())
    assert entry.describe()["parameters"] == entry.num_parameters


def test_describe_a_tiny_model(repo_root: Path) -> None:
    write_good(repo_root)
    info = ModelRepository(repo_root).entry("good").describe()
    assert info["kind"] == "autoregressive"
    assert (info["input_form"], info["vocab_size"]) == ("tokens", VOCAB)
    assert (info["attention_type"], info["num_groups"], info["num_heads"]) == ("gqa", 2, 4)
    assert (info["num_layers"], info["embed_dim"], info["max_seq_len"], info["window"]) == (
        2, 32, 64, 64,
    )  # fmt: skip
    assert (info["task"], info["metrics"]) == ("test task", {"acc": 0.5})
    assert info["moe"] is None


def test_load_casts_freezes_and_evaluates(repo_root: Path) -> None:
    write_good(repo_root)
    repo = ModelRepository(repo_root)
    entry = repo.scan().entries["good"]
    assert isinstance(entry, ModelEntry)
    model = repo.load(entry, dtype=torch.float16)
    assert not model.training
    params = list(model.parameters())
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in params)


def test_an_entry_from_another_repository_is_refused(tmp_path: Path, repo_root: Path) -> None:
    other_root = tmp_path / "other"
    write_good(other_root)
    entry = ModelRepository(other_root).entry("good")
    with pytest.raises(CheckpointError, match="outside the model repository"):
        ModelRepository(repo_root).load(entry)


def test_unknown_model_and_missing_root_say_what_to_do(tmp_path: Path, repo_root: Path) -> None:
    write_good(repo_root)
    with pytest.raises(ModelNotFoundError, match=r"no model 'nope'.*\['good'\]"):
        ModelRepository(repo_root).entry("nope")
    with pytest.raises(ValueError, match="invalid model name"):
        ModelRepository(repo_root).load("../repo/good")
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        ModelRepository(tmp_path / "absent")
    repo = ModelRepository(repo_root)
    shutil.rmtree(repo_root)
    with pytest.raises(FileNotFoundError, match="model repository"):
        repo.scan()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        ModelRepository(tmp_path / "file")
