"""Limits of one worker's scheduler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SchedulerSettings:
    max_running: int = 32  # sequences holding a cache row, per worker
    max_batch_tokens: int = 512  # tokens fed per iteration (decode rows + prefill)
    kv_budget_bytes: int = 512 * 2**20
    predict_max_batch: int = 32  # sequences per regression batch
    predict_max_wait_s: float = 0.002
