"""The model repository: a directory of model_core checkpoints, one sub-directory per model.

    models/
        text-lm/            config.json, model.safetensors, card.json (optional)
        sine-regressor/
        ...

`ModelRepository(root).scan()` lists the models it finds (config and card read, weights
only through the safetensors header) and, by name, the sub-directories that are broken and
why; one broken checkpoint never hides the others. `load` / `load_all` build the modules.

Nothing outside the root is ever read: every path is resolved and must stay under the
resolved root, so a symlink out of the repository is reported instead of followed. The
default root is the bundled demo checkpoints (`model_core.recipes.bundled_dir()`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from model_core import checkpoint
from model_core.attention.gqa import resolve_num_groups
from model_core.checkpoint import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from model_core.configs import TransformerModelConfig

MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Top-level directories that are never checkpoints: Python's bytecode cache (the bundled
# demos are a package, so importing it may write one).
_IGNORED_DIRS = frozenset({"__pycache__"})


class ModelNotFoundError(LookupError):
    """No model of that name in the repository (the message lists the ones there are)."""


def validate_model_name(name: str) -> str:
    """`name` if it is a valid model name, else ValueError saying what a name may be."""
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: a name is 1-64 characters from letters, digits, "
            "'.', '_' and '-', starts with a letter or digit and holds no '..'; rename the "
            "checkpoint directory to such a name"
        )
    return name


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint of the repository, as scanned (its weights are not loaded)."""

    name: str
    path: Path
    config: TransformerModelConfig
    card: dict[str, Any] | None
    num_parameters: int  # summed over the safetensors header's tensor shapes

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/models/{id}` shows about the model itself (the server adds its
        limits and devices)."""
        cfg = self.config
        ffn = cfg.ffn_config
        assert ffn is not None  # set by TransformerModelConfig.__post_init__
        uses_tokens = cfg.uses_tokens
        info: dict[str, Any] = {
            "id": self.name,
            "kind": cfg.kind,
            "input_form": "tokens" if uses_tokens else "values",
            # A token model reads ids and returns logits over the vocabulary: its
            # input_dim / output_dim fields are unused, so they are not shown.
            "input_dim": None if uses_tokens else cfg.input_dim,
            "output_dim": None if uses_tokens else cfg.output_dim,
            "vocab_size": cfg.vocab_size,
            "attention_type": cfg.attention_type,
            "num_groups": resolve_num_groups(
                cfg.attention_type, cfg.embed_dim, cfg.num_heads, cfg.num_groups
            ),
            "num_layers": cfg.num_layers,
            "embed_dim": cfg.embed_dim,
            "num_heads": cfg.num_heads,
            "max_seq_len": cfg.max_seq_len,
            "window": cfg.window,
            "parameters": self.num_parameters,
            "moe": {"num_experts": ffn.num_experts, "top_k": ffn.topk} if ffn.use_moe else None,
        }
        if cfg.kind == "encoder_decoder":
            # Same fallback as model_core's EncoderDecoder: unset counts take num_layers.
            n_enc = cfg.num_encoder_layers
            n_dec = cfg.num_decoder_layers
            info["num_encoder_layers"] = n_enc if n_enc is not None else cfg.num_layers
            info["num_decoder_layers"] = n_dec if n_dec is not None else cfg.num_layers
            info["num_layers"] = info["num_encoder_layers"] + info["num_decoder_layers"]
        for key in ("task", "metrics"):
            if self.card is not None and key in self.card:
                info[key] = self.card[key]
        return info


@dataclass(frozen=True)
class RepositoryScan:
    """The outcome of one scan: usable models and broken checkpoints, each by name."""

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class ModelRepository:
    """The checkpoints under `root` (default: the bundled demo checkpoints)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from model_core.recipes import bundled_dir

            root = bundled_dir()
        self.root = Path(root)
        self._check_root()

    def scan(self) -> RepositoryScan:
        """Every checkpoint under the root, sorted by name; broken ones go to `errors`
        with the reason. Hidden entries and plain files at the top level are ignored."""
        root = self._check_root()
        entries: dict[str, ModelEntry] = {}
        errors: dict[str, str] = {}
        for child in sorted(self.root.iterdir(), key=lambda p: p.name):
            name = child.name
            if name.startswith(".") or name in _IGNORED_DIRS:
                continue
            if not child.is_symlink() and not child.is_dir():
                continue  # a plain file (a README, the package's __init__.py, ...)
            try:
                entry = self._scan_one(child, root)
            except (CheckpointError, ValueError, OSError) as exc:
                errors[name] = str(exc)
            else:
                if entry is not None:
                    entries[name] = entry
        return RepositoryScan(entries=entries, errors=errors)

    def entry(self, name: str) -> ModelEntry:
        """The scanned entry of model `name`. Raises ValueError for an invalid name,
        ModelNotFoundError when there is no such checkpoint, CheckpointError when it is
        broken."""
        validate_model_name(name)
        root = self._check_root()
        path = self.root / name
        if not (path.is_dir() or path.is_symlink()):
            raise ModelNotFoundError(
                f"no model {name!r} in the repository {self.root}; its models are "
                f"{self._names()}. Add a checkpoint directory {path} (model_core.checkpoint"
                ".save writes one) or pick one of those"
            )
        entry = self._scan_one(path, root)
        if entry is None:  # a symlink to a file: not a checkpoint
            raise ModelNotFoundError(f"{path}: is not a checkpoint directory")
        return entry

    def load(
        self,
        entry_or_name: ModelEntry | str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """The model's module on `device` (cast to `dtype` when given, e.g. torch.float16
        on CUDA), in eval mode, without gradients. Raises as `entry` does, and
        CheckpointError when the weights do not load."""
        if isinstance(entry_or_name, ModelEntry):
            entry = entry_or_name
            self._inside_root(entry.path, self._check_root(), entry.name)
        else:
            entry = self.entry(entry_or_name)
        model = checkpoint.load(entry.path, device)
        if dtype is not None:
            model = model.to(dtype=dtype)
        model.eval()
        model.requires_grad_(False)
        return model

    def load_all(
        self,
        names: Iterable[str] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> tuple[dict[str, nn.Module], dict[str, str]]:
        """Load `names` (default: every model the scan finds). Returns (modules by name,
        error by name); a model that fails to load does not stop the others."""
        errors: dict[str, str] = {}
        if names is None:
            scan = self.scan()
            targets: list[ModelEntry | str] = list(scan.entries.values())
            errors.update(scan.errors)
        else:
            targets = list(dict.fromkeys(names))
        models: dict[str, nn.Module] = {}
        for target in targets:
            name = target.name if isinstance(target, ModelEntry) else target
            try:
                models[name] = self.load(target, device, dtype)
            except (CheckpointError, ModelNotFoundError, ValueError, OSError) as exc:
                errors[name] = str(exc)
            except RuntimeError as exc:  # e.g. out of device memory
                errors[name] = f"{name}: could not be loaded on {device}: {exc}"
        return models, errors

    # ---- scanning ------------------------------------------------------------------------

    def _check_root(self) -> Path:
        """The resolved root; FileNotFoundError / NotADirectoryError when it is unusable."""
        if not self.root.exists():
            raise FileNotFoundError(
                f"model repository {self.root} does not exist; create it and put one "
                "checkpoint directory per model in it (config.json + model.safetensors, as "
                "model_core.checkpoint.save writes), or point the server at another root"
            )
        if not self.root.is_dir():
            raise NotADirectoryError(
                f"model repository {self.root} is not a directory; the repository is a "
                "directory holding one checkpoint directory per model"
            )
        return self.root.resolve()

    def _scan_one(self, child: Path, root: Path) -> ModelEntry | None:
        """The entry for `child`, None when it is a symlink to a file inside the root.
        Raises CheckpointError / ValueError saying what is wrong."""
        name = child.name
        resolved = self._inside_root(child, root, name)
        if child.is_symlink():
            if not resolved.exists():
                raise CheckpointError(
                    f"{child}: a symlink to {resolved}, which does not exist; remove the "
                    "link or restore its target"
                )
            if not resolved.is_dir():
                return None  # a link to a plain file: ignored like a plain file
        validate_model_name(name)
        # checkpoint's own checks follow symlinks; keep every file it reads inside the root.
        for file_name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
            if (resolved / file_name).is_symlink():
                self._inside_root(resolved / file_name, root, name)
        config = checkpoint.load_config(resolved)
        card = checkpoint.read_card(resolved)
        weights = resolved / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(
                f"{weights}: missing; a checkpoint needs {WEIGHTS_FILE} next to "
                f"{CONFIG_FILE} (model_core.checkpoint.save writes both)"
            )
        return ModelEntry(
            name=name,
            path=resolved,
            config=config,
            card=card,
            num_parameters=_count_parameters(weights),
        )

    def _inside_root(self, path: Path, root: Path, name: str) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise CheckpointError(
                f"{path}: resolves to {resolved}, outside the model repository {root}; "
                f"model {name!r} is not read. Copy the checkpoint into the repository "
                "instead of linking to it"
            )
        return resolved

    def _names(self) -> list[str]:
        return sorted(self.scan().entries)


def _count_parameters(weights: Path) -> int:
    """Elements in all tensors of a safetensors file, from its header alone."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = f.keys()  # safe_open is not iterable
            return sum(math.prod(f.get_slice(key).get_shape()) for key in names)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights}: not a readable safetensors file ({exc}); re-save the checkpoint "
            "with model_core.checkpoint.save"
        ) from exc
