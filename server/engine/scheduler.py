"""A worker's scheduler: iteration-level (continuous) batching over its models.

Each `step()`:
1. fails requests past their deadline;
2. admits waiting requests (FIFO) while fewer than `max_running` hold a row and the KV
   pool has room (a request waits when it has not);
3. prefills: feeds pending prompt tokens, at most `max_batch_tokens` minus one per
   decoding row, so a long prompt is chunked over several iterations while the running
   streams keep decoding;
4. decodes: one batched cached step (or speculative round) per group of sequences;
5. retires finished sequences (a session's cache is parked in the KV pool);
6. runs the regression batches that are due.
It returns every event of the iteration as one list (one pipe message).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from torch import nn

from server.engine.decode_group import DecodeGroup
from server.engine.kv_pool import KVPool
from server.engine.predict_batcher import PredictBatcher
from server.engine.protocol import CANCELLED, INTERNAL, INVALID, TIMEOUT, Event, WorkRequest
from server.engine.request_checks import check_request
from server.engine.row_group import RowGroup
from server.engine.scheduler_settings import SchedulerSettings
from server.engine.seq2seq_group import Seq2SeqGroup
from server.engine.sequence import Sequence, new_sequence
from server.engine.speculative_group import SpeculativeGroup


class Scheduler:
    def __init__(self, models: dict[str, nn.Module], settings: SchedulerSettings) -> None:
        self.models = models
        self.settings = settings
        self.pool = KVPool(settings.kv_budget_bytes)
        self.waiting: deque[Sequence] = deque()
        self.groups: dict[tuple[Any, ...], RowGroup] = {}
        self.running: dict[str, tuple[Sequence, RowGroup]] = {}
        self.batchers: dict[str, PredictBatcher] = {}
        self.steps = 0

    # Commands.
    def submit(self, req: WorkRequest) -> list[Event]:
        problem = check_request(req, self.models)
        if problem is not None:
            return [("error", req.id, INVALID, problem)]
        if req.op == "predict":
            if req.model not in self.batchers:
                self.batchers[req.model] = PredictBatcher(
                    self.models[req.model],
                    self.settings.predict_max_batch,
                    self.settings.predict_max_wait_s,
                )
            self.batchers[req.model].add(req)
        else:
            self.waiting.append(new_sequence(req, list(req.inputs)))
        return []

    def cancel(self, request_id: str) -> list[Event]:
        for seq in self.waiting:
            if seq.id == request_id:
                self.waiting.remove(seq)
                return [seq.done_event("cancelled")]
        if request_id in self.running:
            seq, group = self.running.pop(request_id)
            group.remove(seq)
            return [seq.done_event("cancelled")]
        for batcher in self.batchers.values():
            if batcher.remove(request_id):
                return [("error", request_id, CANCELLED, "cancelled")]
        return []

    def drop_session(self, session_id: str) -> None:
        self.pool.drop(session_id)

    def idle_wait(self, longest: float) -> float:
        """How long the worker may wait for commands before the next step is due: 0 with
        sequences to advance, the time to the next regression batch (no busy-waiting for
        it), else `longest`."""
        if self.waiting or self.running:
            return 0.0
        waits = [w for b in self.batchers.values() if (w := b.wait_s()) is not None]
        return min([longest, *waits])

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or any(self.batchers.values()))

    # One iteration.
    def step(self, flush: Callable[[list[Event]], None] | None = None) -> list[Event]:
        """One iteration; returns its events. With `flush`, the first tokens that prefill
        produced are handed to it before the decode step runs (time to first token then
        does not include a decode step of the whole batch)."""
        events: list[Event] = []
        self.steps += 1
        self._expire(events)
        self._admit(events)
        decoding = sum(len(g.decoding()) for g in self.groups.values())
        budget = max(1, self.settings.max_batch_tokens - decoding)
        for group in self._busy_groups():
            if budget > 0:
                budget -= self._guarded(group, events, _prefill_with(budget, events)) or 0
        self._retire(events)
        if flush is not None and events:
            flush(events)
            events = []
        for group in self._busy_groups():
            self._guarded(group, events, _decode_with(events))
        self._retire(events)
        for batcher in self.batchers.values():
            while batcher.due():
                batcher.run(events)
        return events

    def stats(self) -> dict[str, Any]:
        spec = [s for s, g in self.running.values() if isinstance(g, SpeculativeGroup)]
        return {
            "running": len(self.running),
            "waiting": len(self.waiting) + sum(len(b) for b in self.batchers.values()),
            "running_speculative": len(spec),
            "steps": self.steps,
            **self.pool.stats(),
        }

    # Parts.
    def _busy_groups(self) -> list[RowGroup]:
        return [g for g in self.groups.values() if len(g)]

    def _guarded(self, group: RowGroup, events: list[Event], action: Any) -> Any:
        """Run a group's step; if it raises, fail that group's requests (not the worker)."""
        try:
            return action(group)
        except Exception as exc:
            for seq in list(group.seqs):
                self.running.pop(seq.id, None)
                events.append(("error", seq.id, INTERNAL, f"{type(exc).__name__}: {exc}"))
                group.remove(seq)
            return 0

    def _expire(self, events: list[Event]) -> None:
        now = time.time()
        for seq in [s for s in self.waiting if _late(s, now)]:
            self.waiting.remove(seq)
            events.append(("error", seq.id, TIMEOUT, _deadline_message(seq)))
        for seq, group in [v for v in self.running.values() if _late(v[0], now)]:
            del self.running[seq.id]
            group.remove(seq)
            events.append(("error", seq.id, TIMEOUT, _deadline_message(seq)))

    def _admit(self, events: list[Event]) -> None:
        coming: dict[int, int] = {}  # sequences about to join each group
        room = self.settings.max_running - len(self.running)
        for seq in list(self.waiting)[:room]:
            key = id(self._group_for(seq.req))
            coming[key] = coming.get(key, 0) + 1
        while self.waiting and len(self.running) < self.settings.max_running:
            seq = self.waiting[0]
            group = self._group_for(seq.req)
            wanted = coming.get(id(group), 1)
            coming[id(group)] = max(1, wanted - 1)
            if not group.add(seq, events, wanted):
                if not self.running:  # nothing will free memory: it can never fit
                    self.waiting.popleft()
                    events.append(("error", seq.id, INVALID, self._too_big(group)))
                    continue
                return  # wait for running sequences to free rows
            self.waiting.popleft()
            self.running[seq.id] = (seq, group)
            events.append(("admitted", seq.id, time.monotonic() - seq.arrived))

    def _too_big(self, group: RowGroup) -> str:
        return (
            f"one sequence of this model needs {group.row_bytes()} bytes of KV cache, more "
            f"than the worker's KV budget ({self.pool.budget} bytes); raise the KV budget"
        )

    def _retire(self, events: list[Event]) -> None:
        for seq, group in [v for v in self.running.values() if v[0].finished]:
            del self.running[seq.id]
            extra = {}
            if isinstance(group, SpeculativeGroup):
                extra["speculative"] = _spec_summary(seq.spec)
            group.remove(seq)
            events.append(seq.done_event(seq.finished or "stop", extra))

    def _group_for(self, req: WorkRequest) -> RowGroup:
        rows = self.settings.max_running
        if req.op == "speculative":
            assert req.draft_model is not None
            key: tuple[Any, ...] = ("speculative", req.model, req.draft_model, req.draft_steps)
            if key not in self.groups:
                target, draft = self.models[req.model], self.models[req.draft_model]
                group = SpeculativeGroup(req.model, target, draft, req.draft_steps, self.pool, rows)
                self._add_group(key, group)
            return self.groups[key]
        key = (req.op, req.model)
        if key not in self.groups:
            cls = Seq2SeqGroup if req.op == "seq2seq" else DecodeGroup
            self._add_group(key, cls(req.model, self.models[req.model], self.pool, rows))
        return self.groups[key]

    def _add_group(self, key: tuple[Any, ...], group: RowGroup) -> None:
        self.groups[key] = group
        self.pool.reclaimers.append(group.release_idle)


def _decode_with(events: list[Event]) -> Any:
    return lambda group: group.decode(events)


def _prefill_with(budget: int, events: list[Event]) -> Any:
    return lambda group: group.prefill(budget, events)


def _late(seq: Sequence, now: float) -> bool:
    return seq.req.deadline is not None and now > seq.req.deadline


def _deadline_message(seq: Sequence) -> str:
    return (
        f"the request passed its deadline after {seq.emitted} outputs; "
        "retry with a longer timeout or fewer new tokens"
    )


def _spec_summary(counts: dict[str, int]) -> dict[str, Any]:
    tested = counts["accepted"] + counts["rejected"]
    return {
        **counts,
        "acceptance_rate": counts["accepted"] / counts["proposed"] if counts["proposed"] else 0.0,
        "alpha": counts["accepted"] / tested if tested else 1.0,
    }
