"""Encoder-decoder decoding: each source is encoded once when its sequence joins, its
cross-attention K/V written into the row's memory slots (padded to `max_seq_len` and
masked), then decoding runs like autoregressive generation over the decoder's cache."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.kv_cache import KVCache
from model_core.transformer_model import EncoderDecoderCache
from server.engine.decode_group import DecodeGroup
from server.engine.kv_pool import KVPool
from server.engine.protocol import Event
from server.engine.sequence import Sequence


class Seq2SeqGroup(DecodeGroup):
    def __init__(self, name: str, model: nn.Module, pool: KVPool, max_rows: int) -> None:
        super().__init__(name, model, pool, max_rows)
        cfg = model.config
        self.source_slots = cfg.max_seq_len
        first = model.decoder_layers[0].cross_attn
        self.groups, self.head_dim = first.num_groups, cfg.embed_dim // cfg.num_heads
        self.memory: list[tuple[Tensor, Tensor]] = []
        self.memory_pad: Tensor | None = None  # (rows, S) True = padding
        memory_bytes = 2 * len(model.decoder_layers) * self.groups * self.source_slots
        self._row_bytes += memory_bytes * self.head_dim * self.dtype.itemsize

    def _new_cache(self, rows: int) -> KVCache:
        cfg, layers = self.model.config, self.model.decoder_layers
        groups = layers[0].self_attn.num_groups
        head_dim = cfg.embed_dim // cfg.num_heads
        return KVCache(
            len(layers), rows, groups, head_dim, self.capacity, None, self.device, self.dtype
        )

    def resize(self, rows: int) -> None:
        n = len(self.seqs)
        super().resize(rows)
        shape = (rows, self.groups, self.source_slots, self.head_dim)
        old_memory, old_pad = self.memory, self.memory_pad
        if not rows:
            self.memory, self.memory_pad = [], None
            return
        self.memory = [(self._zeros(shape), self._zeros(shape)) for _ in self.model.decoder_layers]
        self.memory_pad = torch.ones(rows, self.source_slots, dtype=torch.bool, device=self.device)
        if old_pad is not None and n:
            for (k, v), (ok, ov) in zip(self.memory, old_memory, strict=True):
                k[:n], v[:n] = ok[:n], ov[:n]
            self.memory_pad[:n] = old_pad[:n]

    def _zeros(self, shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def copy_row(self, src: int, dst: int) -> None:
        super().copy_row(src, dst)
        assert self.memory_pad is not None
        for k, v in self.memory:
            k[dst], v[dst] = k[src], v[src]
        self.memory_pad[dst] = self.memory_pad[src]

    def view(self, start: int, stop: int) -> EncoderDecoderCache:
        assert self.cache is not None and self.memory_pad is not None
        memory = [(k[start:stop], v[start:stop]) for k, v in self.memory]
        return EncoderDecoderCache(
            self.cache.rows(start, stop), memory, self.memory_pad[start:stop]
        )

    def start(self, seq: Sequence, events: list[Event]) -> None:
        assert self.cache is not None and self.memory_pad is not None
        row = seq.row
        self.cache.reset_rows([row])
        source = seq.req.inputs
        encoded = self.model.encode(self.inputs([source]))
        for layer, (k, v) in zip(self.model.decoder_layers, self.memory, strict=True):
            mk, mv = layer.cross_attn.project_kv(encoded)  # (1, G, S, hd)
            k[row, :, : len(source)] = mk[0]
            v[row, :, : len(source)] = mv[0]
        self.memory_pad[row] = True
        self.memory_pad[row, : len(source)] = False
        seq.pending = list(seq.req.start)

    def finish(self, seq: Sequence) -> None:
        del seq  # seq2seq requests have no sessions
