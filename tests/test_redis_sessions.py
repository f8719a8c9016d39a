"""RedisSessionStore against a real redis-server: the session store contract, Redis
expiry, atomic checked appends, and a session surviving its server (another engine on
the same Redis continues it with identical outputs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from server.engine.engine import Engine
from server.engine.settings import EngineSettings
from server.redis_sessions import RedisSessionStore, make_store
from server.sessions import InMemorySessionStore, SessionConflictError, SessionNotFoundError
from tests.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def run(coro):
    return asyncio.run(coro)


def test_create_get_save_delete_and_owners(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, prefix="t1:")
        session = await store.create("text-lm", "alice", 60)
        assert session.id.startswith("sess_") and session.history == []
        got = await store.get(session.id, "alice")
        assert got is not None and got.model == "text-lm" and got.owner == "alice"
        assert await store.get(session.id, "bob") is None and await store.get(session.id) is None
        got.history += [1, 2, 3]
        await store.save(got)
        got.history += [4]
        await store.save(got)  # appends only what is new
        again = await store.get(session.id, "alice")
        assert again is not None and again.history == [1, 2, 3, 4]
        values = await store.create("sine-forecaster", None, 60)
        values.history = [[0.5], [-0.25]]
        await store.save(values)
        assert (await store.get(values.id)).history == [[0.5], [-0.25]]
        assert await store.count() == 2
        assert not await store.delete(session.id, "bob")
        assert await store.delete(session.id, "alice")
        assert await store.get(session.id, "alice") is None
        with pytest.raises(SessionNotFoundError):
            await store.save(again)
        await store.close()

    run(scenario())


def test_concurrent_appends_are_checked_not_lost(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, prefix="t2:")
        session = await store.create("text-lm", None, 60)
        first, second = await store.get(session.id), await store.get(session.id)
        first.history += [7, 8]
        await store.save(first)
        second.history += [9]
        with pytest.raises(SessionConflictError):
            await store.save(second)  # it read an older history: refused, nothing lost
        assert (await store.get(session.id)).history == [7, 8]
        await store.close()

    run(scenario())


def test_redis_expires_sessions_and_sweep_reports_them(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, prefix="t3:")
        short = await store.create("text-lm", None, 0.3)
        busy = await store.create("text-lm", None, 0.3)
        busy.busy = True
        await store.save(busy)  # a running generation keeps it alive
        await asyncio.sleep(0.6)
        assert await store.get(short.id) is None
        assert await store.get(busy.id) is not None
        assert await store.sweep() == [short.id]
        assert await store.count() == 0 or await store.get(busy.id) is not None
        await store.close()

    run(scenario())


def test_make_store_picks_by_setting(redis_url: str) -> None:
    assert isinstance(make_store("memory", None), InMemorySessionStore)
    assert isinstance(make_store(redis_url, None), RedisSessionStore)
    with pytest.raises(ValueError, match="redis://"):
        make_store("postgres://x", None)


def test_a_session_continues_on_another_engine_from_the_redis_history(redis_url: str) -> None:
    """Failover at the store level: engine A serves two turns, then goes away; engine B
    (no cache of it) continues from the history in Redis, as one call on it would."""

    async def scenario() -> tuple[list[int], list[int], int]:
        settings = EngineSettings(models=["text-lm"])
        async with Engine(settings, store=RedisSessionStore(redis_url, prefix="t4:")) as a:
            session = await a.open_session("text-lm")
            for text in (b"def add(a, b):", b"\n    return"):
                await (await a.session_generate(session.id, list(text), max_new_tokens=6)).result()
        store = RedisSessionStore(redis_url, prefix="t4:")
        async with Engine(settings, store=store) as b:
            history = (await store.get(session.id)).history
            turn = await (
                await b.session_generate(session.id, list(b" a"), max_new_tokens=6)
            ).result()
            whole = await b.request(
                "generate", "text-lm", history + list(b" a"), max_new_tokens=6
            ).result()
            return turn.outputs, whole.outputs, turn.usage["cached_tokens"]

    turn, whole, cached = run(scenario())
    assert turn == whole and cached == 0
