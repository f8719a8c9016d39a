"""Autoregressive generation with one model: chunked prefill, then one batched cached
step per iteration for every decoding row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from model_core.kv_cache import KVCache
from server.engine.kv_pool import KVPool
from server.engine.protocol import Event
from server.engine.row_group import RowGroup
from server.engine.sequence import Sequence, pick_tokens


class DecodeGroup(RowGroup):
    """Rows of one autoregressive model (token or value). A session's cache is parked in
    the KV pool when its request ends and restored when the session continues."""

    def __init__(self, name: str, model: nn.Module, pool: KVPool, max_rows: int) -> None:
        super().__init__(pool, max_rows)
        self.name = name
        self.model = model
        cfg = model.config
        self.uses_tokens = bool(cfg.uses_tokens)
        self.input_dim = cfg.input_dim
        self.capacity = cfg.max_seq_len
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache: KVCache | None = None
        self._row_bytes = self._new_cache(1).nbytes()

    def _new_cache(self, rows: int) -> KVCache:
        return self.model.new_cache(rows, capacity=self.capacity)

    # Storage.
    def row_bytes(self) -> int:
        return self._row_bytes

    def resize(self, rows: int) -> None:
        old, n = self.cache, len(self.seqs)
        self.cache = self._new_cache(rows) if rows else None
        if old is not None and self.cache is not None and n:
            _copy_cache_rows(old, self.cache, n)

    def copy_row(self, src: int, dst: int) -> None:
        assert self.cache is not None
        self.cache.copy_row(src, dst)

    def view(self, start: int, stop: int) -> Any:
        """What the model's `step` takes for rows `[start, stop)`."""
        assert self.cache is not None
        return self.cache.rows(start, stop)

    # Sequences.
    def start(self, seq: Sequence, events: list[Event]) -> None:
        assert self.cache is not None
        row, req = seq.row, seq.req
        self.cache.reset_rows([row])
        if req.session_id is None:
            return
        state = self.pool.take(req.session_id, self.name)
        if state is not None and state.length <= len(req.inputs):
            self.cache.import_row(row, state)
            seq.cached_tokens = state.length
            seq.pending = req.inputs[state.length :]
            if not seq.pending:  # everything is cached: feed the last input again
                self.cache.rows(row, row + 1).rollback(torch.tensor([state.length - 1]))
                seq.cached_tokens -= 1
                seq.pending = req.inputs[-1:]
        elif req.history_len:
            self.pool.rebuilds += 1

    def finish(self, seq: Sequence) -> None:
        if seq.req.session_id is not None and self.cache is not None:
            self.pool.park(seq.req.session_id, self.name, self.cache.export_row(seq.row))

    def inputs(self, items: list[Any]) -> Tensor:
        """Inputs as the model takes them: `(B, T)` ids or `(B, T, input_dim)` values."""
        if self.uses_tokens:
            return torch.tensor(items, dtype=torch.long, device=self.device)
        return torch.tensor(items, dtype=self.dtype, device=self.device)

    def outputs(self, out: Tensor, seqs: list[Sequence]) -> list[Any]:
        """The next output of each sequence from its last outputs `(n, X)`."""
        if self.uses_tokens:
            return pick_tokens(out, seqs)
        return out.float().tolist()

    def prefill(self, budget: int, events: list[Event]) -> int:
        fed = 0
        for seqs, chunks, start, x, lengths in self.prefill_batches(budget):
            out = self.model.step(x, self.view(start, start + len(seqs)), lengths)
            last = torch.tensor([len(c) - 1 for c in chunks], device=self.device)
            outputs = out[torch.arange(len(seqs), device=self.device), last]
            for i, (seq, chunk) in enumerate(zip(seqs, chunks, strict=True)):
                fed += len(chunk)
                if not seq.pending:
                    seq.emit(self.outputs(outputs[i : i + 1], [seq])[0], events)
        return fed

    def prefill_batches(
        self, budget: int
    ) -> Iterator[tuple[list[Sequence], list[list[Any]], int, Tensor, Tensor | None]]:
        """Chunks of pending inputs (at most `budget` tokens in all), batched over runs of
        adjacent rows: (sequences, chunks, first row, right-padded inputs, lengths or
        None). Each sequence's `pending` has already lost its chunk."""
        picked: list[tuple[Sequence, list[Any]]] = []
        for seq in self.seqs:
            room = budget - sum(len(c) for _, c in picked)
            if seq.pending and not seq.finished and room > 0:
                picked.append((seq, seq.pending[:room]))
                seq.pending = seq.pending[room:]
        blank = 0 if self.uses_tokens else [0.0] * self.input_dim
        i = 0
        while i < len(picked):
            j = i + 1
            while j < len(picked) and picked[j][0].row == picked[j - 1][0].row + 1:
                j += 1
            seqs = [s for s, _ in picked[i:j]]
            chunks = [c for _, c in picked[i:j]]
            width = max(len(c) for c in chunks)
            x = self.inputs([c + [blank] * (width - len(c)) for c in chunks])
            lengths = None
            if any(len(c) < width for c in chunks):
                lengths = torch.tensor([len(c) for c in chunks], device=self.device)
            yield seqs, chunks, seqs[0].row, x, lengths
            i = j

    def decode(self, events: list[Event]) -> None:
        n = len(self.seqs)
        mask = [s.decoding for s in self.seqs]
        active = [s for s in self.seqs if s.decoding]
        if not active:
            return
        blank = 0 if self.uses_tokens else [0.0] * self.input_dim
        x = self.inputs([[s.last if d else blank] for s, d in zip(self.seqs, mask, strict=True)])
        lengths = None
        if len(active) < n:
            lengths = torch.tensor(mask, dtype=torch.long, device=self.device)
        out = self.model.step(x, self.view(0, n), lengths)[:, -1]
        if lengths is not None:
            out = out[lengths.bool()]
        for seq, output in zip(active, self.outputs(out, active), strict=True):
            seq.emit(output, events)


def _copy_cache_rows(src: KVCache, dst: KVCache, n: int) -> None:
    """Rows `[0, n)` of `src` into `dst` (same shape per row)."""
    for a, b in zip(src.layers, dst.layers, strict=True):
        b.k[:n] = a.k[:n]
        b.v[:n] = a.v[:n]
    dst.slot_pos[:n] = src.slot_pos[:n]
    dst.lengths[:n] = src.lengths[:n]
