"""A module's math without `nn.Module.__call__`.

`__call__` costs a few microseconds (hook checks, dispatch). A small model's decode step
calls some twenty modules per layer, so at batch 1 that overhead is a sizeable part of
the step: the step path calls the math of its Linear and LayerNorm modules directly.
(Hooks registered on those inner modules therefore do not fire on that path.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def linear(module: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x, module.weight, module.bias)


def layer_norm(module: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
