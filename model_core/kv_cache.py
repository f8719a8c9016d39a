"""Preallocated KV caches written by index, one row per sequence.

Each layer holds K and V as `(B, G, C, hd)`: B sequences, G key/value heads, C slots.
Position p of row b lives in slot `p % C`. `slot_pos[b, c]` is the absolute position held
by slot c (-1 = empty), so one mask rule serves both strategies:

- expanding: C is the longest sequence; positions past C are an error.
- sliding window W: C = W + slack. A token at position p sees positions (p - W, p]. A step
  may write up to `slack + 1` tokens before attending without overwriting any key still
  in a window, and `rollback` may undo up to `slack + 1` tokens exactly (speculative
  decoding uses this).

Rows advance independently (`lengths[b]`), so sequences of different lengths, joining
and leaving a batch, share one cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_SLIDING_SLACK = 63


class CacheFullError(ValueError):
    """A sequence outgrew an expanding cache."""


@dataclass
class CachePlan:
    """Where one step's tokens go and what each may attend to (shared by all layers)."""

    positions: Tensor  # (B, T) absolute positions of the step's tokens
    write_rows: Tensor  # (N,) row of each valid token
    write_steps: Tensor  # (N,) index within the step of each valid token
    write_slots: Tensor  # (N,) slot each valid token is written to
    kv_len: int  # attention reads slots [0, kv_len)
    mask: Tensor | None  # (B, 1, T, kv_len) or (T, kv_len) bool, True = attend; None = all
    contiguous_start: int | None = None  # every row writes slots [start, start + T)


class LayerKV:
    """One layer's K/V buffers: views into the cache's storage."""

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k = k  # (B, G, C, hd)
        self.v = v

    def write(self, k: Tensor, v: Tensor, plan: CachePlan) -> None:
        start = plan.contiguous_start
        if start is not None:  # all rows at the same length: one slice copy per tensor
            self.k[:, :, start : start + k.shape[2]] = k
            self.v[:, :, start : start + v.shape[2]] = v
            return
        rows, steps, slots = plan.write_rows, plan.write_steps, plan.write_slots
        # k[rows, :, steps] is (N, G, hd); the destination index has the same shape.
        self.k[rows, :, slots] = k[rows, :, steps]
        self.v[rows, :, slots] = v[rows, :, steps]

    def read(self, plan: CachePlan) -> tuple[Tensor, Tensor]:
        return self.k[:, :, : plan.kv_len], self.v[:, :, : plan.kv_len]


class KVCache:
    """The self-attention cache of a stack of layers for B sequences."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_groups: int,
        head_dim: int,
        capacity: int,
        window: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if window is not None and capacity < window:
            raise ValueError(f"capacity ({capacity}) must be >= the window ({window})")
        self.capacity = capacity
        self.window = window
        shape = (batch_size, num_groups, capacity, head_dim)
        self.layers = [
            LayerKV(
                torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(shape, device=device, dtype=dtype),
            )
            for _ in range(num_layers)
        ]
        self.slot_pos = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_step(self) -> int:
        """Most tokens one step may write (longer inputs are split into chunks)."""
        if self.window is None:
            return self.capacity
        return self.capacity - self.window + 1

    def nbytes(self) -> int:
        """Bytes held by the K/V tensors."""
        return sum(
            t.numel() * t.element_size() for layer in self.layers for t in (layer.k, layer.v)
        )

    def plan(self, num_tokens: int, valid: Tensor | None = None) -> CachePlan:
        """Reserve slots for a step of `num_tokens` new tokens per row.

        valid: `(B, T)` bool, True for real tokens (a row's real tokens come first); None
        when all are real (the decode fast path). Padded tokens are not written and do
        not advance the row.
        """
        t = num_tokens
        assert t <= self.max_step, f"step of {t} tokens > max_step {self.max_step}"
        b, device = self.batch_size, self.lengths.device
        if valid is None and self.window is None:
            shortest, longest = (int(n) for n in self.lengths.aminmax())
            if shortest == longest:
                return self._plan_uniform(t, longest)
        steps = torch.arange(t, device=device)
        positions = self.lengths[:, None] + steps  # (B, T)
        if valid is None:
            new_lengths = self.lengths + t
            rows = torch.arange(b, device=device).repeat_interleave(t)
            step_idx = steps.repeat(b)
        else:
            new_lengths = self.lengths + valid.sum(dim=1)
            rows, step_idx = valid.nonzero(as_tuple=True)
        longest = int(new_lengths.max())
        if self.window is None and longest > self.capacity:
            raise CacheFullError(
                f"sequence of {longest} tokens exceeds the cache capacity "
                f"({self.capacity}); allocate a larger cache or use a sliding window"
            )
        written = positions[rows, step_idx]
        slots = written % self.capacity
        self.slot_pos[rows, slots] = written
        self.lengths.copy_(new_lengths)  # in place: row views (`rows`) share it
        kv_len = min(self.capacity, longest)
        held = self.slot_pos[:, None, :kv_len]  # (B, 1, L)
        query = positions[:, :, None]  # (B, T, 1)
        allowed = (held >= 0) & (held <= query)
        if self.window is not None:
            allowed &= query - held < self.window
        if valid is not None:
            # A padded query of an empty row would see nothing (NaN); let it see slot 0.
            allowed[:, :, 0] |= ~valid
        return CachePlan(positions, rows, step_idx, slots, kv_len, allowed[:, None])

    def _plan_uniform(self, t: int, length: int) -> CachePlan:
        """Expanding cache, every row at `length` with T real new tokens: slots
        [0, length) hold positions 0..length-1, so the step writes one contiguous slice
        and query i sees slots <= length + i (all of them for one token: no mask)."""
        if length + t > self.capacity:
            raise CacheFullError(
                f"sequence of {length + t} tokens exceeds the cache capacity "
                f"({self.capacity}); allocate a larger cache or use a sliding window"
            )
        device = self.lengths.device
        positions = torch.arange(length, length + t, device=device).expand(self.batch_size, t)
        self.slot_pos[:, length : length + t] = positions
        self.lengths += t
        kv_len = length + t
        mask = None
        if t > 1:
            mask = torch.ones(t, kv_len, dtype=torch.bool, device=device).tril(length)
        empty = torch.empty(0, dtype=torch.long, device=device)
        return CachePlan(positions, empty, empty, empty, kv_len, mask, contiguous_start=length)

    def rollback(self, new_lengths: Tensor) -> None:
        """Forget every position >= `new_lengths[b]` of each row (no-op where longer)."""
        new_lengths = torch.minimum(self.lengths, new_lengths.to(self.lengths))
        if self.window is not None:
            undone = int((self.lengths - new_lengths).max())
            assert undone <= self.max_step, f"cannot roll back {undone} > {self.max_step}"
        self.slot_pos.masked_fill_(self.slot_pos >= new_lengths[:, None], -1)
        self.lengths.copy_(new_lengths)

    def reset_rows(self, rows: Tensor | list[int]) -> None:
        """Empty the given rows so new sequences can use them."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        self.slot_pos[rows] = -1
        self.lengths[rows] = 0

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows `[start, stop)` as a cache that shares this one's storage: steps run on
        the view write through to these rows (a scheduler runs a step on the rows in use)."""
        view = object.__new__(KVCache)
        view.capacity, view.window = self.capacity, self.window
        view.layers = [LayerKV(layer.k[start:stop], layer.v[start:stop]) for layer in self.layers]
        view.slot_pos = self.slot_pos[start:stop]
        view.lengths = self.lengths[start:stop]
        return view

    def copy_row(self, src: int, dst: int) -> None:
        """Make row `dst` hold what row `src` holds."""
        for layer in self.layers:
            layer.k[dst] = layer.k[src]
            layer.v[dst] = layer.v[src]
        self.slot_pos[dst] = self.slot_pos[src]
        self.lengths[dst] = self.lengths[src]

    def export_row(self, row: int) -> RowState:
        """A copy of one row, trimmed to its length for an expanding cache."""
        length = int(self.lengths[row])
        used = self.capacity if self.window is not None else length
        return RowState(
            length,
            [
                (layer.k[row, :, :used].clone(), layer.v[row, :, :used].clone())
                for layer in self.layers
            ],
            self.slot_pos[row, :used].clone(),
        )

    def import_row(self, row: int, state: RowState) -> None:
        """Load an exported row into `row` (of a cache with the same shape per token)."""
        used = state.slot_pos.shape[0]
        self.reset_rows([row])
        for layer, (k, v) in zip(self.layers, state.kv, strict=True):
            layer.k[row, :, :used] = k
            layer.v[row, :, :used] = v
        self.slot_pos[row, :used] = state.slot_pos
        self.lengths[row] = state.length


@dataclass
class RowState:
    """One sequence's cache taken out of a batch (e.g. an idle session's)."""

    length: int
    kv: list[tuple[Tensor, Tensor]]  # per layer, (G, used slots, hd)
    slot_pos: Tensor  # (used slots,)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.kv for t in pair)
