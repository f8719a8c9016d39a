"""The retry policy both clients follow: which failures are retried and how long to wait.

429 and 503 answers, and connections that fail before the request is sent, are retried
with exponential backoff, waiting at least the server's `Retry-After`.
"""

from __future__ import annotations

import email.utils
import math
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:  # errors.py imports parse_retry_after from here
    from clients.errors import KvserveError

RETRY_STATUSES = frozenset({429, 503})
MAX_BACKOFF_S = 30.0  # the exponential backoff's ceiling (a longer Retry-After still wins)

# Failures that happen before any byte of the request reaches the server: safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_delay(attempt: int, backoff_s: float, retry_after_s: float | None) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first): exponential
    backoff with up to 10% jitter (so that clients refused together do not come back
    together), and never less than the server's Retry-After."""
    backoff = min(backoff_s * 2**attempt, MAX_BACKOFF_S) * (1 + 0.1 * random.random())
    return max(backoff, retry_after_s or 0.0)


def retry_wait(
    attempt: int,
    max_retries: int,
    backoff_s: float,
    outcome: KvserveError | httpx.TransportError,
) -> float | None:
    """Seconds to wait before trying again after `outcome` (the server's error, or a
    connection that failed), or None to give up."""
    if attempt >= max_retries:
        return None
    if isinstance(outcome, httpx.TransportError):
        return retry_delay(attempt, backoff_s, None) if isinstance(outcome, _NOT_SENT) else None
    if outcome.status in RETRY_STATUSES:
        return retry_delay(attempt, backoff_s, outcome.retry_after_s)
    return None
