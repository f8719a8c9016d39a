"""A request's state inside a worker, and picking each sequence's next token."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from model_core.sampling import SamplingParams, probabilities, sample_from
from server.engine.protocol import INVALID, Event, WorkRequest

NOT_FINITE = (
    "the model's output for this input is not a finite number (inf or NaN): the input "
    "values are too far from what the model can compute with"
)


def finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass
class Sequence:
    """One generation inside a worker.

    pending: inputs not yet in the cache (the prompt during prefill). last: the newest
    output, fed at the next decode step. row: its row in its group's batch cache."""

    req: WorkRequest
    pending: list[Any]
    params: SamplingParams
    generator: torch.Generator | None
    cached_tokens: int = 0
    emitted: int = 0
    last: Any = None
    row: int = -1
    finished: str | None = None  # finish reason, once it has one
    error: str | None = None  # why it failed: it ends with an error event, not done
    arrived: float = field(default_factory=time.monotonic)
    spec: dict[str, int] = field(
        default_factory=lambda: {"rounds": 0, "proposed": 0, "accepted": 0, "rejected": 0}
    )

    @property
    def id(self) -> str:
        return self.req.id

    @property
    def decoding(self) -> bool:
        """Prefill is over and outputs are still wanted: the next step feeds `last`."""
        return not self.pending and self.finished is None

    @property
    def remaining(self) -> int:
        return self.req.max_new_tokens - self.emitted

    def usage(self) -> dict[str, int]:
        prompt = len(self.req.inputs) + len(self.req.start)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.emitted,
            "cached_tokens": self.cached_tokens,
        }

    def emit(self, output: Any, events: list[Event]) -> None:
        """Send one output; set `finished` when it is the last one. A value output that
        is not finite (no JSON number) fails the request instead."""
        if isinstance(output, list) and not finite(output):
            self.error, self.finished = NOT_FINITE, "error"
            return
        events.append(("token", self.req.id, self.emitted, output))
        self.emitted += 1
        self.last = output
        if isinstance(output, int) and output in self.req.stop:
            self.finished = "stop"
        elif self.emitted >= self.req.max_new_tokens:
            self.finished = "length"

    def done_event(self, reason: str, extra: dict[str, Any] | None = None) -> Event:
        if self.error is not None:
            return ("error", self.req.id, INVALID, self.error)
        return ("done", self.req.id, reason, self.usage(), extra or {})


def new_sequence(req: WorkRequest, pending: list[Any]) -> Sequence:
    s = req.sampling
    params = SamplingParams(s.temperature, s.top_k, s.top_p)
    generator = None
    if not params.greedy and s.seed is not None:
        generator = torch.Generator().manual_seed(s.seed)
    return Sequence(req, pending, params, generator)


def pick_tokens(logits: Tensor, seqs: list[Sequence]) -> list[int]:
    """Next token of each sequence from its logits row `(n, V)`: one argmax for the greedy
    rows, and each sampled row drawn with its own generator (so a seeded request draws
    the same tokens whatever it is batched with)."""
    if all(s.params.greedy for s in seqs):
        return logits.argmax(dim=-1).tolist()
    out = []
    for i, s in enumerate(seqs):
        if s.params.greedy:
            out.append(int(logits[i].argmax()))
        else:
            probs = probabilities(logits[i : i + 1].float().cpu(), s.params)
            out.append(int(sample_from(probs, s.generator)))
    return out
