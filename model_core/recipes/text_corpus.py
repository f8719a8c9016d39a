"""The text corpus of the text-lm recipes: the Python standard library's own source.

Source: the `.py` files under the running interpreter's stdlib directory
(`sysconfig.get_paths()["stdlib"]`), available offline everywhere Python is, under the
PSF licence. Selection is deterministic: the paths sorted, test suites (`test/`, `tests/`,
`idlelib/idle_test/`, ...), `site-packages/` and generated or vendored trees skipped, files
read as UTF-8 until `max_bytes` is reached. Files are split into train and held-out by
position in that order (every `HELD_OUT_EVERY`-th file is held out), so held-out files are
never trained on. Text is byte-level tokens (`model_core.tokenizer`, vocab 259); each file
is followed by EOS.
"""

from __future__ import annotations

import math
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.tokenizer import EOS

LICENCE = "Python Software Foundation License (PSF-2.0), the licence of the CPython stdlib"
MAX_BYTES = 6_000_000
HELD_OUT_EVERY = 10  # file i is held out when i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
)
MAX_FILE_BYTES = 200_000  # very large files (generated tables) are skipped


@dataclass(frozen=True)
class Corpus:
    """Token ids of the train and held-out files (each a 1-D long tensor) and the files."""

    train: Tensor
    held_out: Tensor
    train_files: tuple[str, ...]
    held_out_files: tuple[str, ...]
    stdlib: str

    def describe(self) -> dict[str, object]:
        return {
            "source": f"Python {_python_version()} standard library source (.py files under "
            f"sysconfig stdlib: {self.stdlib})",
            "licence": LICENCE,
            "selection": f"sorted paths, skipping {sorted(SKIPPED_DIRS)} and files over "
            f"{MAX_FILE_BYTES} bytes, first {MAX_BYTES} bytes of files; every "
            f"{HELD_OUT_EVERY}th file held out",
            "train_files": len(self.train_files),
            "train_bytes": int(self.train.numel()),
            "held_out_files": len(self.held_out_files),
            "held_out_bytes": int(self.held_out.numel()),
            "tokens": "UTF-8 bytes (model_core.tokenizer, vocab 259), EOS after each file",
        }


def _python_version() -> str:
    return sys.version.split()[0]


def stdlib_files(root: Path) -> list[Path]:
    """The selected `.py` files under `root`, sorted by relative path."""
    files = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        parts = path.relative_to(root).parts
        if any(part in SKIPPED_DIRS or part.startswith("test_") for part in parts):
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        files.append(path)
    return files


_SEPARATOR = b"\0"  # a byte that never occurs in the selected source; becomes EOS


def _ids(data: bytearray) -> Tensor:
    ids = torch.frombuffer(data, dtype=torch.uint8).long()
    ids[ids == 0] = EOS
    return ids


@lru_cache(maxsize=2)
def load_corpus(max_bytes: int = MAX_BYTES) -> Corpus:
    """The corpus (cached per process)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train = bytearray()
    held = bytearray()
    train_files: list[str] = []
    held_files: list[str] = []
    total = 0
    for i, path in enumerate(stdlib_files(root)):
        try:
            data = path.read_bytes()
            data.decode("utf-8")
            if b"\0" in data:
                continue
        except (OSError, UnicodeDecodeError):
            continue
        name = path.relative_to(root).as_posix()
        if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
            held += data + _SEPARATOR
            held_files.append(name)
        else:
            train += data + _SEPARATOR
            train_files.append(name)
        total += len(data) + 1
        if total >= max_bytes:
            break
    if not train or not held:
        raise RuntimeError(f"no usable Python source found under {root}")
    return Corpus(
        _ids(train),
        _ids(held),
        tuple(train_files),
        tuple(held_files),
        str(root),
    )


def random_windows(
    data: Tensor, batch: int, length: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`batch` random windows of `length + 1` tokens: inputs `(B, length)`, targets."""
    starts = torch.randint(0, data.numel() - length - 1, (batch,), generator=generator)
    idx = starts[:, None] + torch.arange(length + 1)
    windows = data[idx]
    return windows[:, :-1], windows[:, 1:]


def held_out_windows(data: Tensor, count: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """`count` windows of held-out text at positions drawn from `seed` (inputs, targets)."""
    return random_windows(data, count, length, torch.Generator().manual_seed(seed))


@torch.no_grad()
def bits_per_byte(model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int = 16) -> float:
    """Mean next-token cross-entropy over `targets`, in bits (nats / ln 2)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, inputs.shape[0], chunk):
        logits = model(inputs[i : i + chunk])
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets[i : i + chunk].reshape(-1),
            reduction="sum",
        )
        total += float(loss)
        count += targets[i : i + chunk].numel()
    return total / count / math.log(2)
