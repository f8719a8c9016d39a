"""Dynamic batching of regression requests: a model's queued sequences run as one padded
batch once `max_batch` sequences are waiting or the oldest has waited `max_wait_s`."""

from __future__ import annotations

import time

import torch
from torch import nn

from server.engine.protocol import INVALID, Event, WorkRequest
from server.engine.sequence import NOT_FINITE, finite


class PredictBatcher:
    def __init__(self, model: nn.Module, max_batch: int, max_wait_s: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: list[tuple[WorkRequest, float]] = []
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, req: WorkRequest) -> None:
        self.queue.append((req, time.monotonic()))

    def remove(self, request_id: str) -> bool:
        kept = [(r, t) for r, t in self.queue if r.id != request_id]
        removed = len(kept) < len(self.queue)
        self.queue = kept
        return removed

    def due(self) -> bool:
        if not self.queue:
            return False
        waiting = sum(len(r.inputs) for r, _ in self.queue)
        return waiting >= self.max_batch or time.monotonic() - self.queue[0][1] >= self.max_wait_s

    def wait_s(self) -> float | None:
        """Seconds until a batch is due: 0 when one is, None when nothing is queued."""
        if not self.queue:
            return None
        if self.due():
            return 0.0
        return max(0.0, self.queue[0][1] + self.max_wait_s - time.monotonic())

    def run(self, events: list[Event]) -> None:
        """One padded batch of whole requests (at least one, even if it alone is larger
        than max_batch)."""
        batch, size = [], 0
        while self.queue and (not batch or size + len(self.queue[0][0].inputs) <= self.max_batch):
            req, _ = self.queue.pop(0)
            batch.append(req)
            size += len(req.inputs)
        sequences = [seq for req in batch for seq in req.inputs]
        longest = max(len(s) for s in sequences)
        dim = len(sequences[0][0])
        x = torch.zeros(len(sequences), longest, dim, dtype=self.dtype, device=self.device)
        for i, seq in enumerate(sequences):
            x[i, : len(seq)] = torch.tensor(seq, dtype=self.dtype)
        lengths = torch.tensor([len(s) for s in sequences], device=self.device)
        outputs = self.model(x, lengths=lengths).float().tolist()
        start = 0
        for req in batch:
            mine = outputs[start : start + len(req.inputs)]
            start += len(req.inputs)
            if not all(finite(row) for row in mine):
                events.append(("error", req.id, INVALID, NOT_FINITE))
                continue
            usage = {
                "prompt_tokens": sum(len(s) for s in req.inputs),
                "completion_tokens": 0,
                "cached_tokens": 0,
            }
            events.append(("done", req.id, "stop", usage, {"outputs": mine}))
