"""The specification's stateful KV-cache API, over the explicit caches.

`model(x, expanding_context=True)` appends `x` to the model's own cache (an expanding
cache of `max_seq_len` slots); `expanding_context=False` uses a sliding window of
`config.window` tokens instead, so generation can run past `max_seq_len`. Each call
returns the outputs at the positions it computed.

A call may pass either only the new inputs or the whole sequence so far (as the
specification's encoder-decoder loop does): when the input is longer than what is cached
and starts with exactly the cached inputs, only the rest is computed. A new batch size, a
switch of strategy, or (encoder-decoder) a different encoder output starts a new sequence;
`model.reset_cache()` does so explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class StatefulCache:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cache: Any = None
        self.sliding: bool | None = None
        self.inputs: Tensor | None = None  # everything fed so far, for prefix detection
        self.memory: Tensor | None = None

    def run(
        self,
        model: Any,
        x: Tensor,
        expanding_context: bool | None,
        memory: Tensor | None = None,
        memory_padding: Tensor | None = None,
    ) -> Tensor:
        if expanding_context is None:
            expanding_context = model.config.decode_config.expanding_context
        sliding = not expanding_context
        stale = (
            self.cache is None
            or self.sliding != sliding
            or self.cache.lengths.shape[0] != x.shape[0]
            or (memory is not None and memory is not self.memory)
        )
        if stale:
            self.reset()
            self.sliding = sliding
            if memory is None:
                self.cache = model.new_cache(x.shape[0], sliding=sliding)
            else:
                self.memory = memory
                lengths = None if memory_padding is None else (~memory_padding).sum(dim=1)
                self.cache = model.new_cache(memory, lengths, sliding=sliding)
        elif self._continues(x):
            assert self.inputs is not None
            x = x[:, self.inputs.shape[1] :]
        self.inputs = x if self.inputs is None else torch.cat([self.inputs, x], dim=1)
        return model.step(x, self.cache)

    def _continues(self, x: Tensor) -> bool:
        seen = self.inputs
        return (
            seen is not None
            and x.shape[1] > seen.shape[1]
            and x.shape[2:] == seen.shape[2:]
            and torch.equal(x[:, : seen.shape[1]], seen)
        )
