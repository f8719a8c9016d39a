"""Sessions: the front end's record of each conversation's history, in a session store.

A session holds everything needed to rebuild its KV cache anywhere: the model and the
full history (token ids for token models, value vectors for value models; both what was
sent and what was generated). Workers keep the cache only while their KV budget allows,
so losing a cache never loses a session.

`SessionStore` is async so that a Redis store (shared by replicas) can replace
`InMemorySessionStore` behind the same interface. Expiry slides: every `save` moves it to
now + ttl. A session with a generation running on it (`busy`) does not expire, so a
long generation is never cut off by the sweeper; the engine clears `busy` when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

SESSION_ID_PREFIX = "sess_"
# What `new_session_id` makes; anything else names no session and is not looked up.
SESSION_ID = re.compile(r"sess_[A-Za-z0-9_-]{32}")


class SessionLimitError(RuntimeError):
    """The store holds as many sessions as it may (the front end answers 429)."""


class SessionNotFoundError(LookupError):
    """The session was deleted or expired (the front end answers 404)."""


class SessionConflictError(RuntimeError):
    """Another writer appended to the session's history since it was read."""


def new_session_id() -> str:
    """A fresh unguessable session id: 192 random bits, URL-safe."""
    return SESSION_ID_PREFIX + secrets.token_urlsafe(24)


def is_session_id(text: str) -> bool:
    """Whether `text` has the form of a session id (`../x`, `/etc/passwd`, a megabyte of
    junk: no)."""
    return SESSION_ID.fullmatch(text) is not None


def store_limit_error(open_now: int, limit: int) -> SessionLimitError:
    return SessionLimitError(
        f"session limit reached: {open_now} sessions are open (the most this deployment "
        f"holds is {limit}); close sessions that are no longer needed "
        "(DELETE /v1/sessions/{id}), wait for idle ones to expire, or raise max_sessions"
    )


def owner_limit_error(open_now: int, limit: int) -> SessionLimitError:
    return SessionLimitError(
        f"this API key has {open_now} open sessions, the most one key may hold "
        f"(max_sessions_per_key = {limit}); close the ones it no longer needs "
        "(DELETE /v1/sessions/{id}) or wait for idle ones to expire"
    )


@dataclass
class Session:
    """One session. `history` is `list[int]` (token models) or `list[list[float]]`
    (value models); timestamps are the store's clock (seconds since the epoch by default)."""

    id: str
    model: str
    owner: str | None
    history: list[Any]
    created_at: float
    expires_at: float
    ttl_s: float
    busy: bool = False  # a generation is running on it
    # How much history the store held when this copy was read: a shared store appends
    # only what came after it, and refuses the save if another writer appended meanwhile.
    stored_length: int = 0

    @property
    def length(self) -> int:
        return len(self.history)

    def to_public(self) -> dict[str, Any]:
        """What the HTTP API shows about a session (never its owner)."""
        return {
            "id": self.id,
            "model": self.model,
            "length": self.length,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def copy(self) -> Session:
        """A copy whose history (and each value vector in it) is its own."""
        history = [list(item) if isinstance(item, list) else item for item in self.history]
        return dataclasses.replace(self, history=history)


class SessionStore(Protocol):
    """Where sessions live. `owner` None means no auth: it matches only sessions created
    with owner None, and a session of another owner is reported as unknown."""

    async def create(self, model: str, owner: str | None, ttl_s: float) -> Session:
        """A new, empty session. Raises SessionLimitError when the store is full, or
        when `owner` (not None) already holds the most sessions one owner may."""
        ...

    async def get(self, session_id: str, owner: str | None = None) -> Session | None:
        """A copy of the session; None when unknown, expired (it is then deleted) or owned
        by someone else."""
        ...

    async def save(self, session: Session) -> None:
        """Store the session's history and busy flag and slide its expiry to now + ttl
        (also set on `session`). Raises SessionNotFoundError when it is gone."""
        ...

    async def delete(self, session_id: str, owner: str | None = None) -> bool:
        """Remove the session; False when there was none (for this owner)."""
        ...

    async def sweep(self) -> list[str]:
        """Remove every expired session; returns their ids."""
        ...

    async def count(self) -> int:
        """The number of live (unexpired) sessions."""
        ...


class InMemorySessionStore:
    """A `SessionStore` in this process's memory: one replica, lost on restart.

    Its methods never await, so each one is atomic within the event loop. Sessions are
    copied in and out: a caller's changes reach the store only through `save`.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_sessions: int | None = None,
        max_per_owner: int | None = None,
    ) -> None:
        # Wall-clock time by default: `expires_at` is shown to clients and shared with
        # other replicas, where a monotonic reading would mean nothing.
        for name, limit in (("max_sessions", max_sessions), ("max_per_owner", max_per_owner)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {limit}")
        self._clock = clock
        self._max_sessions = max_sessions
        self._max_per_owner = max_per_owner
        self._sessions: dict[str, Session] = {}
        self._by_owner: dict[str, set[str]] = {}  # owner -> its session ids

    async def create(self, model: str, owner: str | None, ttl_s: float) -> Session:
        check_ttl(ttl_s)
        limit = self._max_per_owner
        if owner is not None and limit is not None and self._owned(owner) >= limit:
            self._remove_expired()
            if self._owned(owner) >= limit:
                raise owner_limit_error(self._owned(owner), limit)
        if self._max_sessions is not None and len(self._sessions) >= self._max_sessions:
            self._remove_expired()
            if len(self._sessions) >= self._max_sessions:
                raise store_limit_error(len(self._sessions), self._max_sessions)
        now = self._clock()
        session_id = new_session_id()
        while session_id in self._sessions:  # 192 random bits: never in practice
            session_id = new_session_id()
        session = Session(
            id=session_id,
            model=model,
            owner=owner,
            history=[],
            created_at=now,
            expires_at=now + ttl_s,
            ttl_s=ttl_s,
        )
        self._sessions[session_id] = session
        if owner is not None:
            self._by_owner.setdefault(owner, set()).add(session_id)
        return session.copy()

    async def get(self, session_id: str, owner: str | None = None) -> Session | None:
        session = self._live(session_id) if is_session_id(session_id) else None
        if session is None or session.owner != owner:
            return None
        return session.copy()

    async def save(self, session: Session) -> None:
        stored = self._live(session.id)
        if stored is None or stored.owner != session.owner:
            raise SessionNotFoundError(
                f"session {session.id!r} no longer exists (it was deleted or expired); "
                "open a new session"
            )
        session.expires_at = self._clock() + session.ttl_s
        # id, model, owner and created_at stay as created.
        stored.history = session.copy().history
        stored.busy = session.busy
        stored.ttl_s = session.ttl_s
        stored.expires_at = session.expires_at

    async def delete(self, session_id: str, owner: str | None = None) -> bool:
        session = self._live(session_id) if is_session_id(session_id) else None
        if session is None or session.owner != owner:
            return False
        self._remove(session_id)
        return True

    async def sweep(self) -> list[str]:
        return self._remove_expired()

    async def count(self) -> int:
        now = self._clock()
        return sum(not _expired(s, now) for s in self._sessions.values())

    def _live(self, session_id: str) -> Session | None:
        """The stored session, None when unknown or expired (an expired one is removed)."""
        session = self._sessions.get(session_id)
        if session is not None and _expired(session, self._clock()):
            self._remove(session_id)
            return None
        return session

    def _remove_expired(self) -> list[str]:
        now = self._clock()
        expired = [sid for sid, s in self._sessions.items() if _expired(s, now)]
        for sid in expired:
            self._remove(sid)
        return expired

    def _remove(self, session_id: str) -> None:
        owner = self._sessions.pop(session_id).owner
        if owner is None:
            return
        owned = self._by_owner.get(owner, set())
        owned.discard(session_id)
        if not owned:
            self._by_owner.pop(owner, None)

    def _owned(self, owner: str) -> int:
        return len(self._by_owner.get(owner, ()))


def _expired(session: Session, now: float) -> bool:
    return not session.busy and now >= session.expires_at


def check_ttl(ttl_s: float) -> None:
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"session ttl_s must be a positive number of seconds, got {ttl_s!r}")


async def run_sweeper(
    store: SessionStore,
    interval_s: float,
    on_expired: Callable[[list[str]], None] | None = None,
) -> None:
    """Sweep `store` every `interval_s` seconds until cancelled, passing the removed ids
    to `on_expired` (the engine drops their KV caches). Run it as an asyncio task; an
    error in one sweep is logged and the next sweep still runs."""
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"sweep interval_s must be a positive number, got {interval_s!r}")
    while True:
        await asyncio.sleep(interval_s)
        try:
            expired = await store.sweep()
            if expired and on_expired is not None:
                on_expired(expired)
        except Exception:
            logger.exception("session sweep failed; retrying in %s s", interval_s)
