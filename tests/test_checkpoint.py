"""model_core.checkpoint: safetensors round trips, and refusal of pickle and bad files."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from model_core import checkpoint
from model_core.checkpoint import CheckpointError, load, load_config, read_card, save
from model_core.configs import TransformerModelConfig
from model_core.transformer_model import EncoderDecoder
from tests.model_factories import ar_model, ffn, inputs, regression_model, seq2seq_model

VOCAB = 13

MODELS: dict[str, Callable[[], nn.Module]] = {
    "regression": lambda: regression_model(),
    "regression_tokens_gqa": lambda: regression_model("gqa", vocab_size=VOCAB, num_groups=2),
    "ar_tokens": lambda: ar_model(vocab=VOCAB),
    "ar_values": lambda: ar_model(),
    "ar_tokens_moe": lambda: ar_model(vocab=VOCAB, ffn_config=ffn(use_moe=True)),
    "ar_values_gqa": lambda: ar_model("gqa", num_groups=2),
    "ar_tokens_mqa_kv_cache": lambda: ar_model("mqa", vocab=VOCAB, use_kv_cache=True),
    "seq2seq_tokens": lambda: seq2seq_model(vocab=VOCAB),
    "seq2seq_values_moe_mqa": lambda: seq2seq_model("mqa", ffn_config=ffn(use_moe=True)),
}


def outputs(model: nn.Module, seed: int = 1) -> Tensor:
    """The model's output on fixed inputs (with padding where the kind supports it)."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    vocab = model.config.vocab_size
    try:
        with torch.no_grad():
            if isinstance(model, EncoderDecoder):
                src, tgt = inputs(vocab, 3, 7), inputs(vocab, 3, 5)
                lengths = torch.tensor([7, 4, 2])
                return model(src, tgt, source_lengths=lengths)
            x = inputs(vocab, 3, 6)
            if model.use_kv_cache:
                model.reset_cache()
                return model(x)
            return model(x, lengths=torch.tensor([6, 3, 1]))
    finally:
        torch.set_rng_state(gen_state)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A valid checkpoint directory of a small token model."""
    return save(ar_model(vocab=VOCAB), tmp_path / "ckpt")


# ---- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    model = MODELS[name]()
    expected = outputs(model)
    directory = save(model, tmp_path / name)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load(directory)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.config == model.config
    assert torch.equal(outputs(loaded), expected)
    for (key, a), (key2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert key == key2 and torch.equal(a, b), key


def test_config_round_trip(saved: Path) -> None:
    config = load_config(saved)
    assert config == ar_model(vocab=VOCAB).config
    data = json.loads((saved / "config.json").read_text())
    assert data["format_version"] == checkpoint.FORMAT_VERSION
    assert data["kind"] == "autoregressive"
    assert (
        TransformerModelConfig.from_dict({k: v for k, v in data.items() if k != "format_version"})
        == config
    )


def test_generation_after_round_trip(tmp_path: Path) -> None:
    model = ar_model(vocab=VOCAB)
    loaded = load(save(model, tmp_path / "m"))
    prompt = inputs(VOCAB, 2, 4)
    assert torch.equal(loaded.generate(prompt, 5), model.generate(prompt, 5))


def test_tied_weights_can_be_saved(tmp_path: Path) -> None:
    model = ar_model(vocab=VOCAB)
    model.output_proj.weight = model.embedding.token_embedding.weight  # shared storage
    expected = outputs(model)
    loaded = load(save(model, tmp_path / "tied"))
    assert torch.equal(outputs(loaded), expected)


def test_non_contiguous_weights_can_be_saved(tmp_path: Path) -> None:
    model = ar_model()
    with torch.no_grad():
        weight = model.layers[0].self_attn.in_proj.weight
        model.layers[0].self_attn.in_proj.weight = nn.Parameter(weight.t().contiguous().t())
    assert not model.layers[0].self_attn.in_proj.weight.is_contiguous()
    expected = outputs(model)
    assert torch.equal(outputs(load(save(model, tmp_path / "nc"))), expected)


def test_saved_precision_is_kept(tmp_path: Path) -> None:
    model = ar_model(vocab=VOCAB).to(torch.bfloat16)
    loaded = load(save(model, tmp_path / "bf16"))
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert torch.equal(outputs(loaded), outputs(model))


def test_overwrite_and_no_temporary_files_left(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    save(ar_model(vocab=VOCAB), directory)
    second = ar_model(vocab=VOCAB, num_layers=1)
    save(second, directory)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load(directory)
    assert loaded.config.num_layers == 1
    assert torch.equal(outputs(loaded), outputs(second))


def test_card_and_readme(tmp_path: Path) -> None:
    directory = save(ar_model(vocab=VOCAB), tmp_path / "m", card={"license": "mit", "n": 1})
    assert read_card(directory) == {"license": "mit", "n": 1}
    (directory / "README.md").write_text("# a model\n")
    save(ar_model(vocab=VOCAB), directory)  # no card given: the existing one is kept
    assert read_card(directory) == {"license": "mit", "n": 1}
    load(directory)
    (directory / "card.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"card\.json"):
        read_card(directory)
    (directory / "card.json").unlink()
    assert read_card(directory) is None


def test_save_refuses_non_models_and_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save(nn.Linear(2, 2), tmp_path / "linear")
    directory = tmp_path / "mixed"
    directory.mkdir()
    (directory / "weights.pt").write_bytes(b"not ours")
    with pytest.raises(CheckpointError, match=r"weights\.pt"):
        save(ar_model(), directory)
    assert (directory / "weights.pt").read_bytes() == b"not ours"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save(ar_model(), afile)


def test_leftover_temporary_files_are_never_read(saved: Path) -> None:
    before = outputs(load(saved))
    (saved / ".model.safetensors.abc123.tmp").write_bytes(b"half a file")
    assert torch.equal(outputs(load(saved)), before)


# ---- pickle is never loaded --------------------------------------------------------------


class _PlantMarker:
    """Unpickling this creates the marker file (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_the_planted_pickle_really_runs_code(tmp_path: Path) -> None:
    """The oracle of the tests below: unpickling the payload creates the marker."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_PlantMarker(marker)))
    assert marker.exists()


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "pytorch_model.bin", "model.pkl"])
def test_pickle_next_to_a_checkpoint_is_refused(
    name: str, saved: Path, tmp_path: Path, no_unpickling: None
) -> None:
    marker = tmp_path / "marker"
    with open(saved / name, "wb") as f:
        pickle.dump({"weights": _PlantMarker(marker)}, f)
    for call in (load, load_config, read_card):
        with pytest.raises(CheckpointError, match=name) as info:
            call(saved)
        assert "pickle" in str(info.value) and "never loaded" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.pt", "model.bin"])
def test_torch_save_checkpoint_is_refused(name: str, tmp_path: Path, no_unpickling: None) -> None:
    model = ar_model(vocab=VOCAB)
    directory = tmp_path / "torch_ckpt"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(model.config.to_dict()))
    with open(directory / name, "wb") as f:  # what torch.save writes: a pickle
        pickle.dump(model.state_dict(), f)
    with pytest.raises(CheckpointError, match="safetensors"):
        load(directory)


@pytest.mark.parametrize("name", ["weights.pt", "model.pth", "model.bin", "model.pkl", "x.ckpt"])
def test_a_pickle_file_as_path_is_refused(name: str, tmp_path: Path, no_unpickling: None) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(_PlantMarker(marker), f)
    with pytest.raises(CheckpointError, match="pickle") as info:
        load(path)
    assert str(path) in str(info.value) and "never loaded" in str(info.value)
    assert not marker.exists()


def test_other_paths_are_refused(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory"):
        load(saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="no such"):
        load(tmp_path / "missing")
    (saved / "extra").mkdir()
    with pytest.raises(CheckpointError, match="extra"):
        load(saved)


# ---- bad config.json ---------------------------------------------------------------------


def _edit_config(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        target = data
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value

    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(key)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("hidden_size", 64), r"unknown config fields \['hidden_size'\]"),
        (_set("ffn_config.experts", 2), r"unknown config fields \['experts'\] in ffn_config"),
        (_set("kind", "diffusion"), r"'kind' must be one of"),
        (_set("attention_type", "flash"), r"'attention_type' must be one of"),
        (_set("embed_dim", "32"), r"'embed_dim' must be an integer"),
        (_set("num_heads", 4.0), r"'num_heads' must be an integer"),
        (_set("num_layers", True), r"'num_layers' must be an integer"),
        (_set("apply_causal_mask", "yes"), r"'apply_causal_mask' must be true or false"),
        (_set("dropout", "0.1"), r"'dropout' must be a number"),
        (_set("ffn_config", 3), r"'ffn_config' must be an object"),
        (_set("ffn_config.use_moe", 1), r"'ffn_config.use_moe' must be true or false"),
        (_set("num_layers", None), r"null is not allowed"),
        (_set("embed_dim", 30), r"divisible"),
        (_set("dropout", 1.5), r"dropout must be in"),
        (_set("num_heads", 0), r"num_heads must be"),
        (_set("ffn_config.embed_dim", 16), r"ffn_config.embed_dim"),
        (_drop("format_version"), r"format_version"),
        (_set("format_version", 99), r"format_version 99 is not supported"),
        (_drop("kind"), r"no 'kind'"),
    ],
)
def test_bad_config_is_refused_clearly(
    edit: Callable[[dict[str, Any]], None], message: str, saved: Path
) -> None:
    _edit_config(saved, edit)
    for call in (load, load_config):
        with pytest.raises(CheckpointError, match=message) as info:
            call(saved)
        assert str(saved / "config.json") in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_unreadable_config_is_refused(text: str, saved: Path) -> None:
    (saved / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load(saved)


def test_missing_files_are_named(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load(saved)


# ---- bad model.safetensors ---------------------------------------------------------------


def _edit_tensors(directory: Path, edit: Callable[[dict[str, Tensor]], None]) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_named(saved: Path) -> None:
    _edit_tensors(saved, lambda t: t.pop("layers.1.self_attn.in_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors layers\.1\.self_attn\.in_proj"):
        load(saved)


def test_unexpected_tensor_is_named(saved: Path) -> None:
    _edit_tensors(saved, lambda t: t.update({"layers.9.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors layers\.9\.extra"):
        load(saved)


def test_wrong_shape_is_named(saved: Path) -> None:
    _edit_tensors(saved, lambda t: t.update({"output_proj.bias": torch.zeros(VOCAB + 1)}))
    with pytest.raises(
        CheckpointError, match=r"output_proj\.bias \[14\] \(the config needs \[13\]"
    ):
        load(saved)


def test_weights_of_another_config_are_refused(saved: Path) -> None:
    _edit_config(saved, _set("num_layers", 3))
    with pytest.raises(CheckpointError, match=r"missing tensors layers\.2\."):
        load(saved)


def test_integer_tensor_for_a_weight_is_refused(saved: Path) -> None:
    _edit_tensors(saved, lambda t: t.update({"output_proj.bias": torch.zeros(VOCAB).long()}))
    with pytest.raises(CheckpointError, match="wrong dtype"):
        load(saved)


def test_corrupt_safetensors_is_refused(saved: Path) -> None:
    (saved / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(saved)
