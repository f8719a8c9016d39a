"""A `SessionStore` in Redis, shared by replicas (redis-py's asyncio API).

Per session: a hash `<prefix>sess:<id>` (model, owner, created_at, ttl_s, busy) and a list
`<prefix>hist:<id>` with one JSON item per history element (a token id or a value
vector). Both expire with Redis's own expiry, slid on every save; a busy session's
expiry is pushed out by `BUSY_GRACE_S` so a long generation is never cut off, while a
replica that dies mid-generation cannot keep it forever. A sorted set `<prefix>sessions`
scores ids by expiry, for `count` and for `sweep` to report the expired ids (so replicas
drop their cached K/V); `<prefix>owner:<owner>` does the same for one owner's sessions.

`create` is one Lua script: the limits (all sessions, one owner's) are checked and the
session added in one step, so replicas sharing the store cannot pass them together.

`save` is one Lua script: it checks the session still exists for this owner and that the
history still has the length this copy read (else `SessionConflictError`), then appends
only the new items — an atomic append, whichever replica writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from server.sessions import (
    Session,
    SessionConflictError,
    SessionNotFoundError,
    check_ttl,
    is_session_id,
    new_session_id,
    owner_limit_error,
    store_limit_error,
)

BUSY_GRACE_S = 3600.0

CREATE = """
local meta, index, owned = KEYS[1], KEYS[2], KEYS[3]
local now, expires, ms, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_all, max_owned, has_owner = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
if max_all then
  local open = redis.call('ZCOUNT', index, now, '+inf')
  if open >= max_all then
    return {-1, open}
  end
end
if has_owner then
  redis.call('ZREMRANGEBYSCORE', owned, '-inf', '(' .. now)
  local n = redis.call('ZCARD', owned)
  if max_owned and n >= max_owned then
    return {-2, n}
  end
end
redis.call('HSET', meta, unpack(ARGV, 8))
redis.call('PEXPIRE', meta, ms)
redis.call('ZADD', index, expires, id)
if has_owner then
  redis.call('ZADD', owned, expires, id)
  if redis.call('PTTL', owned) < tonumber(ms) then
    redis.call('PEXPIRE', owned, ms)
  end
end
return {0, 0}
"""

SAVE = """
local meta, hist, index, owned = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, base, busy, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local expires, ms, id = ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', meta) == 0 or redis.call('HGET', meta, 'owner') ~= owner then
  return -1
end
local n = redis.call('LLEN', hist)
if n ~= base then
  return -2
end
for i = 8, #ARGV do
  redis.call('RPUSH', hist, ARGV[i])
end
redis.call('HSET', meta, 'busy', busy, 'ttl_s', ttl, 'expires_at', expires)
redis.call('PEXPIRE', meta, ms)
if redis.call('EXISTS', hist) == 1 then
  redis.call('PEXPIRE', hist, ms)
end
redis.call('ZADD', index, expires, id)
if owner ~= '' then
  redis.call('ZADD', owned, expires, id)
  if redis.call('PTTL', owned) < tonumber(ms) then
    redis.call('PEXPIRE', owned, ms)
  end
end
return n + #ARGV - 7
"""


class RedisSessionStore:
    def __init__(
        self,
        url: str,
        max_sessions: int | None = None,
        prefix: str = "kvserve:",
        clock: Callable[[], float] = time.time,
        max_per_owner: int | None = None,
    ) -> None:
        self.redis = aioredis.from_url(url, decode_responses=True)
        self.max_sessions = max_sessions
        self.max_per_owner = max_per_owner
        self.prefix = prefix
        self._clock = clock
        self._create = self.redis.register_script(CREATE)
        self._save = self.redis.register_script(SAVE)

    def _keys(self, session_id: str) -> tuple[str, str]:
        return f"{self.prefix}sess:{session_id}", f"{self.prefix}hist:{session_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}sessions"

    def _owned(self, owner: str | None) -> str:
        return f"{self.prefix}owner:{owner or ''}"

    async def create(self, model: str, owner: str | None, ttl_s: float) -> Session:
        check_ttl(ttl_s)
        now = self._clock()
        session = Session(new_session_id(), model, owner, [], now, now + ttl_s, ttl_s)
        meta, _ = self._keys(session.id)
        fields = {
            "model": model,
            "owner": owner or "",
            "created_at": repr(now),
            "ttl_s": repr(ttl_s),
            "expires_at": repr(session.expires_at),
            "busy": "0",
        }
        per_owner = self.max_per_owner if owner is not None else None
        code, count = await self._create(
            keys=[meta, self._index, self._owned(owner)],
            args=[
                repr(now), repr(session.expires_at), int(ttl_s * 1000), session.id,
                "" if self.max_sessions is None else self.max_sessions,
                "" if per_owner is None else per_owner,
                "1" if owner is not None else "0",
                *[item for pair in fields.items() for item in pair],
            ],
        )  # fmt: skip
        if code == -1:
            assert self.max_sessions is not None
            raise store_limit_error(int(count), self.max_sessions)
        if code == -2:
            assert per_owner is not None
            raise owner_limit_error(int(count), per_owner)
        return session

    async def get(self, session_id: str, owner: str | None = None) -> Session | None:
        if not is_session_id(session_id):
            return None
        meta, hist = self._keys(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(meta)
            pipe.lrange(hist, 0, -1)
            fields, items = await pipe.execute()
        if not fields or fields["owner"] != (owner or ""):
            return None
        history = [json.loads(item) for item in items]
        return Session(
            id=session_id,
            model=fields["model"],
            owner=fields["owner"] or None,
            history=history,
            created_at=float(fields["created_at"]),
            expires_at=float(fields["expires_at"]),
            ttl_s=float(fields["ttl_s"]),
            busy=fields["busy"] == "1",
            stored_length=len(history),
        )

    async def save(self, session: Session) -> None:
        now = self._clock()
        session.expires_at = now + session.ttl_s
        life = session.ttl_s + (BUSY_GRACE_S if session.busy else 0.0)
        new_items = [_dumps(item) for item in session.history[session.stored_length :]]
        result = await self._save(
            keys=[*self._keys(session.id), self._index, self._owned(session.owner)],
            args=[
                session.owner or "",
                session.stored_length,
                "1" if session.busy else "0",
                repr(session.ttl_s),
                repr(session.expires_at),
                int(life * 1000),
                session.id,
                *new_items,
            ],
        )
        if result == -1:
            raise SessionNotFoundError(
                f"session {session.id!r} no longer exists (it was deleted or expired); "
                "open a new session"
            )
        if result == -2:
            raise SessionConflictError(
                f"session {session.id!r} changed since it was read (another request "
                "appended to it); read it again"
            )
        session.stored_length = int(result)

    async def delete(self, session_id: str, owner: str | None = None) -> bool:
        if not is_session_id(session_id):
            return False
        meta, hist = self._keys(session_id)
        stored_owner = await self.redis.hget(meta, "owner")
        if stored_owner is None or stored_owner != (owner or ""):
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(meta, hist)
            pipe.zrem(self._index, session_id)
            pipe.zrem(self._owned(owner), session_id)
            await pipe.execute()
        return True

    async def sweep(self) -> list[str]:
        """Ids whose expiry passed: Redis has dropped their keys (or drops them now)."""
        now = self._clock()
        due = await self.redis.zrangebyscore(self._index, "-inf", now)
        expired = []
        for session_id in due:
            meta, hist = self._keys(session_id)
            if await self.redis.exists(meta):
                continue  # busy, or its expiry slid: still live
            await self.redis.delete(hist)
            await self.redis.zrem(self._index, session_id)
            expired.append(session_id)
        return expired

    async def count(self) -> int:
        return int(await self.redis.zcount(self._index, self._clock(), "+inf"))

    async def close(self) -> None:
        await self.redis.aclose()


def _dumps(item: Any) -> str:
    return json.dumps(item, separators=(",", ":"))


def make_store(url: str, max_sessions: int | None, max_per_owner: int | None = None) -> Any:
    """The store a `session_store` setting names: "memory", or a redis:// URL."""
    from server.sessions import InMemorySessionStore

    if url == "memory":
        return InMemorySessionStore(max_sessions=max_sessions, max_per_owner=max_per_owner)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisSessionStore(url, max_sessions=max_sessions, max_per_owner=max_per_owner)
    raise ValueError(f"session_store must be 'memory' or a redis:// URL, got {url!r}")
