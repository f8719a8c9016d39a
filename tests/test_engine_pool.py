"""The engine with real worker processes: routing, one message per step, sessions across
a worker's death, error events within 2 s, restart, overload, cancellation."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from torch import nn

from server.engine.engine import Engine, EngineError
from server.engine.pool import Overloaded
from server.engine.protocol import WORKER_DIED, WorkRequest
from server.engine.scheduler_settings import SchedulerSettings
from server.engine.settings import EngineSettings
from server.model_repository import ModelRepository
from tests.engine_helpers import alone, assert_same_outputs

MODELS = ["text-lm", "text-lm-draft", "sine-forecaster", "digits-seq2seq"]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    loaded, errors = ModelRepository().load_all(MODELS)
    assert not errors
    return loaded


def with_engine(settings: EngineSettings, scenario: Callable[[Engine], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with Engine(settings) as engine:
            return await scenario(engine)

    return asyncio.run(main())


def _kill(engine: Engine, index: int = 0) -> None:
    os.kill(engine.pool.workers[index].process.pid, signal.SIGKILL)


async def _until_ready(engine: Engine, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not engine.ready:
        assert time.monotonic() < deadline, "the pool did not restart its worker"
        await asyncio.sleep(0.05)


def test_32_concurrent_staggered_streams_on_two_workers_equal_alone(
    models: dict[str, nn.Module],
) -> None:
    rng = random.Random(5)
    reqs = []
    for i in range(32):
        prompt = [rng.randrange(256) for _ in range(rng.randint(1, 30))]
        if i % 4 == 0:
            req = WorkRequest(f"r{i}", "speculative", "text-lm", prompt, rng.randint(1, 20))
            req.draft_model = "text-lm-draft"
        elif i % 4 == 1:
            digits = [rng.randrange(10) for _ in range(rng.randint(1, 32))]
            req = WorkRequest(
                f"r{i}", "seq2seq", "digits-seq2seq", digits, 40, start=[11], stop=[12]
            )
        elif i % 4 == 2:
            values = [[rng.uniform(-1, 1)] for _ in range(rng.randint(1, 40))]
            req = WorkRequest(f"r{i}", "generate", "sine-forecaster", values, rng.randint(1, 20))
        else:
            req = WorkRequest(f"r{i}", "generate", "text-lm", prompt, rng.randint(1, 20))
        reqs.append((rng.uniform(0, 0.3), req))
    messages: list[int] = []

    async def scenario(engine: Engine) -> dict[str, Any]:
        deliver = engine.pool.deliver
        engine.pool.deliver = lambda batch: (messages.append(1), deliver(batch))  # type: ignore[method-assign]

        async def one(delay: float, req: WorkRequest) -> tuple[str, Any]:
            await asyncio.sleep(delay)
            return req.id, await engine.submit(req).result()

        results = await asyncio.gather(*(one(d, r) for d, r in reqs))
        return dict(results)

    settings = EngineSettings(models=MODELS, workers_per_device=2)
    results = with_engine(settings, scenario)
    tokens = 0
    for _, req in reqs:
        result = results[req.id]
        tokens += len(result.outputs)
        assert_same_outputs(result.outputs, alone(models, req), req.model == "sine-forecaster")
    # Events travel batched: far fewer worker messages than outputs.
    assert len(messages) < tokens / 2, (len(messages), tokens)


def test_session_continues_across_a_killed_and_restarted_worker(
    models: dict[str, nn.Module],
) -> None:
    turns = [list(b"import os\n"), list(b"import sys\n"), list(b"def main("), list(b"):\n")]

    async def scenario(engine: Engine) -> list[tuple[list[int], dict[str, int], list[int]]]:
        session = await engine.open_session("text-lm")
        seen = []
        for i, new_input in enumerate(turns):
            if i == 2:
                _kill(engine)
                await asyncio.sleep(0.2)
                await _until_ready(engine)
            before = list((await engine.store.get(session.id)).history)
            stream = await engine.session_generate(session.id, new_input, max_new_tokens=8)
            result = await stream.result()
            seen.append((before + new_input, result.usage, result.outputs))
        after = await engine.store.get(session.id)
        assert after is not None and after.history == seen[-1][0] + seen[-1][2]
        return seen

    seen = with_engine(EngineSettings(models=MODELS), scenario)
    for i, (prompt, usage, outputs) in enumerate(seen):
        stateless = WorkRequest("whole", "generate", "text-lm", prompt, 8)
        assert outputs == alone(models, stateless), f"turn {i}"
        if i in (1, 3):
            assert usage["cached_tokens"] == usage["prompt_tokens"] - len(turns[i]) - 1
        if i == 2:  # the restarted worker rebuilt the session from its history
            assert usage["cached_tokens"] == 0


def test_killed_worker_fails_its_requests_within_2s_and_serves_after_restart() -> None:
    async def scenario(engine: Engine) -> tuple[float, str, int]:
        stream = engine.request("generate", "text-lm", list(b"x"), max_new_tokens=500)
        events = aiter(stream)
        await anext(events)  # it is running
        killed = time.monotonic()
        _kill(engine)
        error = None
        async for event in events:
            if event[0] == "error":
                error = event
        waited = time.monotonic() - killed
        await _until_ready(engine)
        result = await engine.request("generate", "text-lm", list(b"ok"), max_new_tokens=3).result()
        assert error is not None
        return waited, error[2], len(result.outputs)

    waited, error_type, served = with_engine(EngineSettings(models=["text-lm"]), scenario)
    assert error_type == WORKER_DIED
    assert waited < 2.0
    assert served == 3


def test_full_queue_answers_overloaded_at_once_and_cancel_frees_it() -> None:
    settings = EngineSettings(
        models=["text-lm"], scheduler=SchedulerSettings(max_running=1), max_waiting=1
    )

    async def scenario(engine: Engine) -> None:
        first = engine.request("generate", "text-lm", list(b"a"), max_new_tokens=300)
        second = engine.request("generate", "text-lm", list(b"b"), max_new_tokens=300)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            engine.request("generate", "text-lm", list(b"c"), max_new_tokens=5)
        assert time.monotonic() - started < 0.05
        assert refused.value.retry_after_s > 0
        # Cancelling ends a stream within a step; its slot takes new work.
        got = 0
        async for event in first:
            if event[0] == "token":
                got += 1
                if got == 3:
                    first.cancel()
            elif event[0] == "done":
                assert event[2] == "cancelled"
        assert got < 10
        second.cancel()
        await _drain(second)
        third = await engine.request("generate", "text-lm", list(b"c"), max_new_tokens=2).result()
        assert len(third.outputs) == 2

    with_engine(settings, scenario)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def test_errors_and_session_rules_through_the_engine() -> None:
    async def scenario(engine: Engine) -> None:
        with pytest.raises(EngineError) as bad:
            await engine.request("generate", "text-lm", [999], max_new_tokens=2).result()
        assert "token id" in str(bad.value)
        session = await engine.open_session("text-lm", owner="alice")
        stream = await engine.session_generate(session.id, [1, 2], owner="alice", max_new_tokens=2)
        await stream.result()
        with pytest.raises(LookupError):
            await engine.session_generate(session.id, [3], owner="bob", max_new_tokens=2)
        assert await engine.close_session(session.id, owner="alice")
        assert await engine.store.get(session.id, owner="alice") is None

    with_engine(EngineSettings(models=["text-lm"]), scenario)
