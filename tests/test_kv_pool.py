"""The KV pool's accounting: reservations, LRU eviction of idle sessions, reclaiming idle
batch storage first."""

from __future__ import annotations

import torch

from model_core.kv_cache import RowState
from server.engine.kv_pool import KVPool


def _state(nbytes: int) -> RowState:
    return RowState(1, [(torch.zeros(nbytes // 8), torch.zeros(nbytes // 8))], torch.zeros(1))


def test_parked_sessions_are_evicted_least_recently_used_first() -> None:
    pool = KVPool(1000)
    for name in ("a", "b", "c"):
        assert pool.park(name, "m", _state(200))
    assert pool.take("a", "m") is not None  # "a" is in use again: b is now the oldest
    assert pool.park("a", "m", _state(200))
    assert pool.reserve(500)  # needs 100 more than the 400 free: evicts b only
    assert list(pool.parked) == ["c", "a"]
    assert pool.evictions == 1 and pool.used <= pool.budget


def test_a_reservation_larger_than_the_budget_fails_without_evicting() -> None:
    pool = KVPool(1000)
    pool.park("a", "m", _state(400))
    assert not pool.reserve(1001)
    assert "a" in pool.parked and pool.evictions == 0


def test_idle_batch_storage_is_reclaimed_before_sessions_are_evicted() -> None:
    pool = KVPool(1000)
    assert pool.reserve(600)
    pool.reclaimers.append(lambda: (pool.release(600), 600)[1])
    pool.park("a", "m", _state(400))
    assert pool.reserve(500)
    assert "a" in pool.parked and pool.evictions == 0
    assert pool.peak <= pool.budget


def test_a_session_too_large_to_park_counts_as_evicted() -> None:
    pool = KVPool(1000)
    assert pool.reserve(900)
    assert not pool.park("a", "m", _state(400))
    assert pool.evictions == 1 and pool.take("a", "m") is None
