"""Speculative decoding for a batch of sequences of one (target, draft) pair.

The rule is `model_core.spec_decoding`'s (Leviathan et al.): the draft proposes up to `g`
tokens per row, the target verifies them in one step of `g + 1` tokens, each row keeps its
accepted proposals plus one token of the target's. Rows advance independently: per-row
`lengths` pad each step and `KVCache.rollback` drops each row's rejected positions.

Per row, the newest output (`seq.last`) is in neither cache; `draft_feed[row]` is what the
draft still has to read (the newest output, preceded by the last proposal when every
proposal was accepted). Prefill feeds the prompt but its last token, which becomes the
first `last`, so the first round is like every other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.kv_cache import KVCache
from model_core.sampling import probabilities, sample_from
from model_core.spec_decoding import _verify_sampled
from server.engine.decode_group import DecodeGroup, _copy_cache_rows
from server.engine.kv_pool import KVPool
from server.engine.protocol import Event
from server.engine.sequence import Sequence


class SpeculativeGroup(DecodeGroup):
    def __init__(
        self,
        name: str,
        target: nn.Module,
        draft: nn.Module,
        draft_steps: int,
        pool: KVPool,
        max_rows: int,
    ) -> None:
        self.draft = draft
        super().__init__(name, target, pool, max_rows)
        self.draft_steps = draft_steps
        self.draft_cache: KVCache | None = None
        self._row_bytes += draft.new_cache(1, capacity=self.capacity).nbytes()
        self.draft_feed: dict[str, list[int]] = {}

    def resize(self, rows: int) -> None:
        old, n = self.draft_cache, len(self.seqs)
        super().resize(rows)
        self.draft_cache = self.draft.new_cache(rows, capacity=self.capacity) if rows else None
        if old is not None and self.draft_cache is not None and n:
            _copy_cache_rows(old, self.draft_cache, n)

    def copy_row(self, src: int, dst: int) -> None:
        super().copy_row(src, dst)
        assert self.draft_cache is not None
        self.draft_cache.copy_row(src, dst)

    def start(self, seq: Sequence, events: list[Event]) -> None:
        assert self.cache is not None and self.draft_cache is not None
        self.cache.reset_rows([seq.row])
        self.draft_cache.reset_rows([seq.row])
        prompt = seq.req.inputs
        seq.pending, seq.last = list(prompt[:-1]), prompt[-1]
        self.draft_feed[seq.id] = [prompt[-1]]

    def finish(self, seq: Sequence) -> None:
        self.draft_feed.pop(seq.id, None)

    def prefill(self, budget: int, events: list[Event]) -> int:
        assert self.draft_cache is not None
        fed = 0
        for seqs, chunks, start, x, lengths in self.prefill_batches(budget):
            stop = start + len(seqs)
            self.model.step(x, self.view(start, stop), lengths)
            self.draft.step(x, self.draft_cache.rows(start, stop), lengths)
            fed += sum(len(c) for c in chunks)
        return fed

    def decode(self, events: list[Event]) -> None:
        assert self.cache is not None and self.draft_cache is not None
        n = len(self.seqs)
        active = [s.decoding for s in self.seqs]
        if not any(active):
            return
        steps = [
            min(self.draft_steps, s.remaining - 1) if a else 0
            for s, a in zip(self.seqs, active, strict=True)
        ]
        t_view, d_view = self.view(0, n), self.draft_cache.rows(0, n)
        t_len0, d_len0 = t_view.lengths.clone(), d_view.lengths.clone()
        proposals, q_rows = self._propose(steps, d_view)

        # Target: [last, proposals] per row, g + 1 tokens, in one step.
        width = max(steps) + 1
        rows_in = [
            [s.last, *p] + [0] * (width - 1 - len(p)) if a else [0] * width
            for s, p, a in zip(self.seqs, proposals, active, strict=True)
        ]
        t_lengths = [g + 1 if a else 0 for g, a in zip(steps, active, strict=True)]
        logits = self.model.step(self.inputs(rows_in), t_view, self._long(t_lengths))

        keep_t, keep_d = t_len0.tolist(), d_len0.tolist()
        greedy_choice = None
        if all(s.params.greedy for s in self.seqs):
            greedy_choice = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(self.seqs):
            if not active[row]:
                continue
            g, drafted = steps[row], proposals[row]
            if greedy_choice is not None or seq.params.greedy:
                choice = (
                    greedy_choice[row]
                    if greedy_choice is not None
                    else logits[row].argmax(dim=-1).tolist()
                )
                accepted = 0
                while accepted < g and drafted[accepted] == choice[accepted]:
                    accepted += 1
                nxt = choice[accepted]
            else:
                acc, tok = _verify_sampled(  # on the CPU, where the generators live
                    logits[row : row + 1, : g + 1].float().cpu(),
                    torch.tensor([drafted], dtype=torch.long).reshape(1, g),
                    q_rows[row],
                    seq.params,
                    seq.generator,
                )
                accepted, nxt = int(acc), int(tok)
            feed = self.draft_feed[seq.id]
            keep_t[row] += 1 + accepted
            keep_d[row] += len(feed) + min(accepted, max(g - 1, 0)) if g else 0
            self.draft_feed[seq.id] = [drafted[-1], nxt] if g and accepted == g else [nxt]
            seq.spec["rounds"] += 1
            seq.spec["proposed"] += g
            seq.spec["accepted"] += accepted
            seq.spec["rejected"] += int(accepted < g)
            for token in [*drafted[:accepted], nxt]:
                seq.emit(token, events)
                if seq.finished:
                    break
        t_view.rollback(self._long(keep_t))
        d_view.rollback(self._long(keep_d))

    def _propose(
        self, steps: list[int], d_view: KVCache
    ) -> tuple[list[list[int]], list[list[Tensor]]]:
        """Up to `steps[row]` draft proposals per row, one cached draft step each; with
        their draft distributions q for the sampled rows."""
        n = len(self.seqs)
        proposals: list[list[int]] = [[] for _ in range(n)]
        q_rows: list[list[Tensor]] = [[] for _ in range(n)]
        if not max(steps):
            return proposals, q_rows
        feeds = [
            self.draft_feed.get(s.id, [0]) if g else [0]
            for s, g in zip(self.seqs, steps, strict=True)
        ]
        width = max(len(f) for f in feeds)
        x = self.inputs([f + [0] * (width - len(f)) for f in feeds])
        lengths = [len(f) if g else 0 for f, g in zip(feeds, steps, strict=True)]
        out = self.draft.step(x, d_view, self._long(lengths))
        q_next = out[torch.arange(n), (self._long(lengths) - 1).clamp(min=0)]
        for i in range(max(steps)):
            live = [g > i for g in steps]
            for row, seq in enumerate(self.seqs):
                if not live[row]:
                    continue
                if seq.params.greedy:
                    proposals[row].append(int(q_next[row].argmax()))
                else:
                    q = probabilities(q_next[row : row + 1].float().cpu(), seq.params)
                    q_rows[row].append(q)
                    proposals[row].append(int(sample_from(q, seq.generator)))
            if i + 1 < max(steps):
                feed_live = [g > i + 1 for g in steps]
                x = self.inputs([[p[-1] if p else 0] for p in proposals])
                q_next = self.draft.step(x, d_view, self._long(feed_live))[:, -1]
        return proposals, q_rows

    def _long(self, values: list) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
