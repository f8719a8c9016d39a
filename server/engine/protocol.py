"""What the front end and the workers say to each other over their pipes.

Requests go to a worker as `WorkRequest`s; commands are small tuples. Events come back as
plain tuples, batched: a worker sends ONE list per scheduler iteration holding every
event of every sequence it advanced, so a step of 32 streams costs one pipe message.

Event tuples (the first item is the kind):
- `("admitted", request_id, queued_s)`: the request got a cache row after `queued_s`
  seconds in the worker's queue (generation requests only).
- `("token", request_id, index, output)`: output `index` (0-based) of a request: a token id,
  or a value vector (list of floats) for value models; `predict` sends none.
- `("done", request_id, finish_reason, usage, extra)`: the request finished; usage is
  `{"prompt_tokens", "completion_tokens", "cached_tokens"}`; extra holds what the kind adds
  (`"outputs"` of a prediction, `"speculative"` statistics).
- `("error", request_id, error_type, message)`: the request failed; nothing follows.
- `("stats", worker_stats)`: the worker's counters (KV pool, queue), sent on request and
  after changes; request_id-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal["generate", "seq2seq", "speculative", "predict"]
Event = tuple[Any, ...]

# Error types carried by error events (the HTTP layer maps them to statuses).
TIMEOUT = "timeout"
CANCELLED = "cancelled"
INVALID = "invalid_request"
WORKER_DIED = "worker_died"
INTERNAL = "internal_error"
OVERLOADED = "overloaded"

# Commands to a worker: ("submit", WorkRequest), ("cancel", request_id),
# ("drop_session", session_id), ("stats",), ("stop",).


@dataclass
class Sampling:
    """How a token model picks each output. temperature 0 = greedy."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class WorkRequest:
    """One unit of work for a worker.

    inputs: the prompt (token ids, or value vectors `[[f, ...], ...]`); for a session, its
    whole history followed by the new input (the worker skips what its cache already
    holds); for `seq2seq` the source; for `predict` a list of value sequences.
    start: the decoder's first tokens (`seq2seq`). stop: outputs that end generation (the
    stop output is sent). deadline: `time.time()` after which the request fails.
    """

    id: str
    op: Op
    model: str
    inputs: list[Any]
    max_new_tokens: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[int] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    draft_model: str | None = None
    draft_steps: int = 4
    session_id: str | None = None
    history_len: int = 0  # leading items of `inputs` that are the session's history
    deadline: float | None = None
