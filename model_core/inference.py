"""Running generation under `torch.inference_mode` without leaking inference tensors."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor

P = ParamSpec("P")
R = TypeVar("R")


def _to_normal(obj: Any) -> Any:
    """Clone the tensors of a result (inside tuples and dataclasses) outside inference
    mode, so callers can use them in autograd and in place."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_to_normal(item) for item in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _to_normal(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **fields)
    return obj


def inference_entry_point(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn` in inference mode (cheaper per op than `no_grad`: about a tenth of a small
    model's decode step) and hand back normal tensors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode():
            result = fn(*args, **kwargs)
        return _to_normal(result)

    return wrapper
