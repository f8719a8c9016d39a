"""Checkpoints: a directory with `config.json` and `model.safetensors`. Never pickle.

    my-model/
        config.json         TransformerModelConfig.to_dict() + "format_version" (+ "kind")
        model.safetensors   the state dict
        card.json           optional metadata (free-form JSON object), see `read_card`
        README.md           optional

`save(model, path)` writes one (each file atomically: a temporary file in the directory,
then a rename); `load(path)` builds the model from its config, checks that the tensors
are exactly the model's (names and shapes) and returns it in eval mode.

Pickle-based formats (`torch.save` files: .pt, .bin, .pkl, ...) can run arbitrary code
when loaded, so they are never opened: `load` refuses a path that is a file and a
directory holding any file other than the four above, before reading anything (the
only other names tolerated are save()'s own temporary files, `.<name>.<random>.tmp`,
which are never read). This module never calls `torch.load` or `pickle`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from model_core.configs import TransformerModelConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
README_FILE = "README.md"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, README_FILE})
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib"})
_SHOWN = 8  # tensor names listed in one error message


class CheckpointError(ValueError):
    """A checkpoint that cannot be (or must not be) loaded; the message names the file."""


def save(
    model: nn.Module, path: str | os.PathLike[str], card: dict[str, Any] | None = None
) -> Path:
    """Write `model` (a model_core model, with its `config`) as a checkpoint directory at
    `path` (created if needed; an existing checkpoint there is overwritten). `card`, if
    given, is written as `card.json`; otherwise an existing card.json / README.md is kept.
    Returns the directory."""
    config = getattr(model, "config", None)
    if not isinstance(config, TransformerModelConfig):
        raise TypeError(
            f"save() takes a model_core model with a TransformerModelConfig `config`, got "
            f"{type(model).__name__}"
        )
    config.validate()
    if card is not None:
        _check_card(card, "card")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory; a checkpoint is one")
    directory.mkdir(parents=True, exist_ok=True)
    _check_entries(directory)  # never mix our files with unknown ones
    # Fresh contiguous copies: safetensors refuses tensors that share storage (tied
    # weights) and non-contiguous views.
    tensors = {
        name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()
    }
    data = {"format_version": FORMAT_VERSION, "kind": config.kind, **config.to_dict()}
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, {"format": "pt"}))
    _atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(_to_json(data)))
    if card is not None:
        _atomic_write(directory / CARD_FILE, lambda p: p.write_text(_to_json(card)))
    return directory


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """The model saved at `path`, on `device`, in eval mode. Raises CheckpointError (naming
    the file and what is wrong) for anything but a valid checkpoint directory."""
    directory = _checkpoint_dir(path)
    config = _read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; a checkpoint needs {WEIGHTS_FILE}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    model = config.build()
    _check_tensors(model, tensors, weights)
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(float_dtypes.pop())  # keep the saved precision (e.g. bfloat16)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def load_config(path: str | os.PathLike[str]) -> TransformerModelConfig:
    """The validated config of the checkpoint directory at `path`."""
    return _read_config(_checkpoint_dir(path))


def read_card(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint's `card.json` (a JSON object), or None when it has none."""
    card_path = _checkpoint_dir(path) / CARD_FILE
    if not card_path.is_file():
        return None
    card = _read_json(card_path)
    _check_card(card, str(card_path))
    return card


# ---- reading -----------------------------------------------------------------------------


def _checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a checkpoint directory holding only known files; nothing is read."""
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not directory.is_dir():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            why = (
                "looks like a pickle file (torch.save); pickle can run arbitrary code when "
                "loaded, so it is never loaded"
            )
        elif directory.suffix == ".safetensors":
            why = "is a bare safetensors file without its config.json"
        else:
            why = "is a file"
        raise CheckpointError(
            f"{directory}: {why}. A checkpoint is a directory holding {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}; convert the weights to safetensors and save them with "
            "model_core.checkpoint.save"
        )
    _check_entries(directory)
    return directory


def _check_entries(directory: Path) -> None:
    for entry in sorted(directory.iterdir()):
        if entry.name in ALLOWED_FILES and entry.is_file():
            continue
        if _is_temp_file(entry.name):
            continue  # a save() in progress (or interrupted); never read
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            hint = (
                "it looks like a pickle file (torch.save), which can run arbitrary code "
                "when loaded; convert it to safetensors (model.safetensors) and remove it"
            )
        else:
            hint = "remove it, or convert pickle weights to safetensors (model.safetensors)"
        raise CheckpointError(
            f"{entry}: unexpected {'directory' if entry.is_dir() else 'file'} in checkpoint "
            f"directory {directory}; only {sorted(ALLOWED_FILES)} may be there, and pickle "
            f"or unknown files are never loaded: {hint}"
        )


def _is_temp_file(name: str) -> bool:
    """A temporary file of `_atomic_write` (`.<allowed name>.<random>.tmp`)."""
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in ALLOWED_FILES)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from exc


def _read_config(directory: Path) -> TransformerModelConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint needs {CONFIG_FILE}")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    data = dict(data)
    version = data.pop("format_version", None)
    if version is None:
        raise CheckpointError(f"{path}: has no 'format_version'; not a model_core checkpoint")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this model_core reads "
            f"versions 1 to {FORMAT_VERSION})"
        )
    if "kind" not in data:
        raise CheckpointError(f"{path}: has no 'kind' (one of the model kinds)")
    _check_fields(data, TransformerModelConfig, path, "")
    try:
        config = TransformerModelConfig.from_dict(data)
        config.validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from exc
    return config


def _check_tensors(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {_names(missing)}")
    if extra:
        problems.append(f"unexpected tensors {_names(extra)}")
    mismatched = [
        f"{name} {list(tensors[name].shape)} (the config needs {list(want.shape)})"
        for name, want in expected.items()
        if name in tensors and tensors[name].shape != want.shape
    ]
    if mismatched:
        problems.append(f"tensors with the wrong shape: {_names(mismatched)}")
    kinds = [
        f"{name} ({tensors[name].dtype})"
        for name, want in expected.items()
        if name in tensors and tensors[name].is_floating_point() != want.is_floating_point()
    ]
    if kinds:
        problems.append(f"tensors with the wrong dtype: {_names(kinds)}")
    if problems:
        raise CheckpointError(
            f"{path}: does not match the model described by {CONFIG_FILE}: " + "; ".join(problems)
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


# ---- config.json field types -------------------------------------------------------------


def _check_fields(data: dict[str, Any], cls: type, path: Path, prefix: str) -> None:
    """Every key of `data` is a field of the dataclass `cls` and has its type (JSON's
    types: an int is accepted for a float, a bool is never a number)."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise CheckpointError(
            f"{path}: unknown config fields {unknown}{where}; known fields: {sorted(hints)}"
        )
    for name, value in data.items():
        _check_value(value, hints[name], path, prefix + name)


def _check_value(value: Any, hint: Any, path: Path, field: str) -> None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # the only unions in the config are `X | None`
            _check_value(value, options[0], path, field)
            return
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: field {field!r} must be an object, got {value!r}")
        _check_fields(value, hint, path, field + ".")
        return
    elif _scalar_ok(value, hint):
        return
    raise CheckpointError(
        f"{path}: field {field!r} must be {_describe(hint)}, got {value!r}"
        + (" (null is not allowed)" if value is None else "")
    )


def _scalar_ok(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is Literal:
        return type(value) is str and value in typing.get_args(hint)
    allowed = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    return type(value) in allowed.get(hint, ())


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return f"one of {list(typing.get_args(hint))}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, str(hint))


# ---- writing -----------------------------------------------------------------------------


def _to_json(data: Any) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def _check_card(card: Any, where: str) -> None:
    if not isinstance(card, dict):
        raise CheckpointError(f"{where}: must be a JSON object, got {type(card).__name__}")


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary file next to `target`, flush it to disk, rename it over
    `target`: readers see the old file or the new one, never half of one."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
