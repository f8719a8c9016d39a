"""What both clients are configured with: the server, the API key, the timeout and the
retries."""

from __future__ import annotations

import os

import httpx

from clients.errors import KvserveError
from clients.retry import retry_wait

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "KVSERVE_API_KEY"
USER_AGENT = f"kvserve-client/0.1 httpx/{httpx.__version__}"


class ClientSettings:
    """What both clients share: the settings, the headers and the retry decision."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        backoff_s: float,
    ) -> None:
        if max_retries < 0 or backoff_s < 0:
            raise ValueError("max_retries and backoff_s must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"User-Agent": USER_AGENT}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def _retry_wait(
        self, attempt: int, retry: bool, outcome: KvserveError | httpx.TransportError
    ) -> float | None:
        """Seconds to wait before trying again, or None to give up (always, unless
        `retry`)."""
        if not retry:
            return None
        return retry_wait(attempt, self.max_retries, self.backoff_s, outcome)
