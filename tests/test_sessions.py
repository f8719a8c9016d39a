"""server.sessions: the in-memory session store (ownership, TTL, sweeping, limits)."""

from __future__ import annotations

import asyncio
import re

import pytest

from server.sessions import (
    InMemorySessionStore,
    Session,
    SessionLimitError,
    SessionNotFoundError,
    SessionStore,
    new_session_id,
    run_sweeper,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_create_get_save_delete_round_trip() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store: SessionStore = InMemorySessionStore(clock=clock)
        session = await store.create("text-lm", None, ttl_s=60)
        assert session.id.startswith("sess_")
        assert (session.model, session.owner, session.history) == ("text-lm", None, [])
        assert (session.created_at, session.expires_at, session.busy) == (1000.0, 1060.0, False)
        assert session.to_public() == {
            "id": session.id, "model": "text-lm", "length": 0,
            "created_at": 1000.0, "expires_at": 1060.0,
        }  # fmt: skip

        session.history.extend([1, 2, 3])
        session.busy = True
        clock.now = 1030.0
        await store.save(session)
        assert session.expires_at == 1090.0  # slid to now + ttl, also on the caller's copy
        got = await store.get(session.id)
        assert got is not None
        assert (got.history, got.busy, got.expires_at, got.created_at) == (
            [1, 2, 3], True, 1090.0, 1000.0,
        )  # fmt: skip
        assert got.to_public()["length"] == 3
        assert await store.count() == 1

        assert await store.delete(session.id) is True
        assert await store.get(session.id) is None
        assert await store.delete(session.id) is False
        assert await store.count() == 0
        with pytest.raises(SessionNotFoundError, match="open a new session"):
            await store.save(session)  # a deleted session is not brought back

    run(scenario())


def test_returned_sessions_are_copies_until_saved() -> None:
    async def scenario() -> None:
        store = InMemorySessionStore(clock=FakeClock())
        session = await store.create("sine-forecaster", "alice", ttl_s=60)
        session.history.append([0.5])
        await store.save(session)
        session.history[0].append(9.0)  # mutate a value vector after saving
        session.history.append([1.0])
        got = await store.get(session.id, "alice")
        assert got is not None and got.history == [[0.5]]
        got.history[0][0] = -1.0
        got.busy = True
        again = await store.get(session.id, "alice")
        assert again is not None and again.history == [[0.5]] and again.busy is False

    run(scenario())


def test_owners_are_isolated() -> None:
    async def scenario() -> None:
        store = InMemorySessionStore(clock=FakeClock())
        alice = await store.create("text-lm", "alice", ttl_s=60)
        anonymous = await store.create("text-lm", None, ttl_s=60)
        assert await store.get(alice.id, "alice") is not None
        assert await store.get(alice.id, "bob") is None
        assert await store.get(alice.id) is None  # no auth does not see owned sessions
        assert await store.get(anonymous.id) is not None
        assert await store.get(anonymous.id, "alice") is None
        assert await store.delete(alice.id, "bob") is False
        assert await store.delete(alice.id) is False
        assert await store.get(alice.id, "alice") is not None  # still there
        forged = Session(**{**vars(alice), "owner": "bob", "history": [7]})
        with pytest.raises(SessionNotFoundError):
            await store.save(forged)
        assert await store.delete(alice.id, "alice") is True

    run(scenario())


def test_ttl_expiry_with_a_fake_clock() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = InMemorySessionStore(clock=clock)
        short = await store.create("text-lm", None, ttl_s=10)
        long = await store.create("text-lm", None, ttl_s=100)
        clock.now += 9.99
        assert await store.get(short.id) is not None
        clock.now += 0.01  # exactly at expires_at: expired
        assert await store.get(short.id) is None
        assert await store.count() == 1
        clock.now += 0.01
        assert await store.get(short.id) is None  # deleted, not only hidden
        assert await store.sweep() == []
        assert await store.get(long.id) is not None

        # save slides the expiry: activity keeps a session alive past its first deadline.
        for _ in range(5):
            clock.now += 80
            await store.save(long)
        assert clock.now > long.created_at + 100
        assert await store.get(long.id) is not None
        clock.now += 100
        assert await store.get(long.id) is None

    run(scenario())


def test_sweep_returns_expired_ids_and_spares_busy_sessions() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = InMemorySessionStore(clock=clock)
        a = await store.create("m", None, ttl_s=10)
        b = await store.create("m", "bob", ttl_s=10)
        busy = await store.create("m", None, ttl_s=10)
        keep = await store.create("m", None, ttl_s=50)
        busy.busy = True
        await store.save(busy)
        clock.now += 20
        assert sorted(await store.sweep()) == sorted([a.id, b.id])
        assert await store.sweep() == []
        assert await store.count() == 2
        running = await store.get(busy.id)
        assert running is not None  # a generation running past the ttl is not cut off
        running.busy = False
        await store.save(running)  # generation done: expiry restarts from now
        clock.now += 10
        assert await store.sweep() == [busy.id]
        assert await store.get(keep.id) is not None

    run(scenario())


def test_ids_are_unguessable_and_unique() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    for sid in ids:
        assert re.fullmatch(r"sess_[A-Za-z0-9_-]{32}", sid)  # 24 random bytes

    async def scenario() -> set[str]:
        store = InMemorySessionStore(clock=FakeClock())
        return {(await store.create("m", None, ttl_s=60)).id for _ in range(500)}

    assert len(run(scenario())) == 500


def test_max_sessions_is_enforced_and_expired_ones_make_room() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = InMemorySessionStore(clock=clock, max_sessions=2)
        first = await store.create("m", None, ttl_s=10)
        await store.create("m", None, ttl_s=100)
        with pytest.raises(SessionLimitError, match=r"session limit reached.*max_sessions"):
            await store.create("m", None, ttl_s=10)
        assert await store.delete(first.id)
        third = await store.create("m", None, ttl_s=10)
        clock.now += 10  # third expires; creating sweeps it to make room
        await store.create("m", None, ttl_s=10)
        assert await store.get(third.id) is None
        assert await store.count() == 2

    run(scenario())


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_bad_ttl_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        run(InMemorySessionStore().create("m", None, ttl_s=ttl))


def test_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        InMemorySessionStore(max_sessions=0)


def test_sweeper_reports_expired_ids_and_survives_errors() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = InMemorySessionStore(clock=clock)
        calls: list[list[str]] = []
        failures = [RuntimeError("callback failed once")]

        def on_expired(ids: list[str]) -> None:
            calls.append(ids)
            if failures:
                raise failures.pop()

        task = asyncio.create_task(run_sweeper(store, 0.001, on_expired))
        first = await store.create("m", None, ttl_s=5)
        clock.now += 5
        while not calls:
            await asyncio.sleep(0.001)
        second = await store.create("m", None, ttl_s=5)
        clock.now += 5
        while len(calls) < 2:
            await asyncio.sleep(0.001)
        assert not task.done()  # the failing callback did not end the loop
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert calls == [[first.id], [second.id]]

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_sweeper_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        run(run_sweeper(InMemorySessionStore(), 0))
