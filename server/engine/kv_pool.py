"""A worker's byte budget for KV caches.

Two kinds of memory count against the budget: the batch caches of the running sequences
(allocated per model group, grown by doubling) and the parked caches of idle sessions.
Batch caches are reserved before they are allocated; when a reservation does not fit,
the storage of idle groups (no running sequence) is freed first, then idle sessions are
evicted least-recently-used first. An evicted session loses only its
cache: its history lives in the front end's session store, and the next call rebuilds the
cache by prefill, so eviction never changes results.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_core.kv_cache import RowState


@dataclass
class ParkedSession:
    model: str
    state: Any  # RowState, or a group-specific state with nbytes()

    def nbytes(self) -> int:
        return self.state.nbytes()


class KVPool:
    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the KV budget must be > 0 bytes, got {budget_bytes}")
        self.budget = budget_bytes
        self.reserved = 0  # batch caches
        self.parked: OrderedDict[str, ParkedSession] = OrderedDict()  # LRU first
        self.parked_bytes = 0
        self.peak = 0
        self.evictions = 0
        self.rebuilds = 0
        # Callbacks that free idle batch storage and return the bytes they released.
        self.reclaimers: list[Callable[[], int]] = []

    @property
    def used(self) -> int:
        return self.reserved + self.parked_bytes

    def reserve(self, nbytes: int) -> bool:
        """Reserve `nbytes` for a batch cache, evicting idle sessions as needed. False
        (nothing evicted) when even evicting every idle session would not make room."""
        if self.used + nbytes > self.budget:
            for reclaim in self.reclaimers:
                reclaim()
        if self.reserved + nbytes > self.budget:
            return False
        while self.used + nbytes > self.budget:
            self._evict_oldest()
        self.reserved += nbytes
        self.peak = max(self.peak, self.used)
        return True

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes
        assert self.reserved >= 0

    def park(self, session_id: str, model: str, state: RowState) -> bool:
        """Keep an idle session's cache. False when it cannot fit even alone (counted as
        an eviction: the session will be rebuilt)."""
        self.drop(session_id)
        size = state.nbytes()
        if self.used + size > self.budget:
            for reclaim in self.reclaimers:
                reclaim()
        if self.reserved + size > self.budget:
            self.evictions += 1
            return False
        while self.used + size > self.budget:
            self._evict_oldest()
        self.parked[session_id] = ParkedSession(model, state)
        self.parked_bytes += size
        self.peak = max(self.peak, self.used)
        return True

    def take(self, session_id: str, model: str) -> RowState | None:
        """Remove and return a session's parked cache (None when it has none, e.g. after
        an eviction or a restart; the caller rebuilds it and counts a rebuild)."""
        parked = self.parked.pop(session_id, None)
        if parked is None:
            return None
        self.parked_bytes -= parked.nbytes()
        if parked.model != model:
            return None
        return parked.state

    def drop(self, session_id: str) -> None:
        parked = self.parked.pop(session_id, None)
        if parked is not None:
            self.parked_bytes -= parked.nbytes()

    def _evict_oldest(self) -> None:
        _, parked = self.parked.popitem(last=False)
        self.parked_bytes -= parked.nbytes()
        self.evictions += 1

    def stats(self) -> dict[str, int]:
        return {
            "budget_bytes": self.budget,
            "used_bytes": self.used,
            "peak_bytes": self.peak,
            "batch_bytes": self.reserved,
            "parked_bytes": self.parked_bytes,
            "parked_sessions": len(self.parked),
            "evictions": self.evictions,
            "rebuilds": self.rebuilds,
        }
