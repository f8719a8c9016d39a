"""The scheduler in-process: continuous batching equals serving alone, sessions equal one
call on the whole history (also after eviction), the KV budget holds, cancellation,
chunked prefill, deadlines, dynamic batching of predictions."""

from __future__ import annotations

import random
import time

import pytest
import torch
from torch import nn

from server.engine.protocol import CANCELLED, INVALID, TIMEOUT, WorkRequest
from server.engine.scheduler import Scheduler
from server.engine.scheduler_settings import SchedulerSettings
from server.model_repository import ModelRepository
from tests.engine_helpers import alone, assert_same_outputs, drive

BOS, EOS = 11, 12  # digits-seq2seq's start and stop tokens


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    loaded, errors = ModelRepository().load_all()
    assert not errors
    return loaded


def _mixed_requests(rng: random.Random, count: int) -> list[WorkRequest]:
    """Token, value, seq2seq and speculative requests of different lengths."""
    reqs = []
    for i in range(count):
        kind = i % 4
        new = rng.randint(1, 24)
        if kind == 0:
            prompt = [rng.randrange(256) for _ in range(rng.randint(1, 40))]
            reqs.append(WorkRequest(f"gen{i}", "generate", "text-lm", prompt, new))
        elif kind == 1:
            prompt = [[rng.uniform(-1, 1)] for _ in range(rng.randint(1, 60))]
            reqs.append(WorkRequest(f"val{i}", "generate", "sine-forecaster", prompt, new))
        elif kind == 2:
            digits = [rng.randrange(10) for _ in range(rng.randint(1, 32))]
            reqs.append(
                WorkRequest(
                    f"s2s{i}", "seq2seq", "digits-seq2seq", digits, 40, start=[BOS], stop=[EOS]
                )
            )
        else:
            prompt = [rng.randrange(256) for _ in range(rng.randint(1, 40))]
            reqs.append(
                WorkRequest(
                    f"spec{i}", "speculative", "text-lm", prompt, new,
                    draft_model="text-lm-draft", draft_steps=rng.choice([2, 4]),
                )
            )  # fmt: skip
    return reqs


def test_32_staggered_requests_equal_each_served_alone(models: dict[str, nn.Module]) -> None:
    rng = random.Random(0)
    reqs = _mixed_requests(rng, 32)
    arrivals: dict[int, list[WorkRequest]] = {}
    for req in reqs:
        arrivals.setdefault(rng.randrange(30), []).append(req)
    sizes: list[int] = []
    scheduler = Scheduler(models, SchedulerSettings(max_batch_tokens=128))
    run = drive(scheduler, arrivals, check=lambda s: sizes.append(len(s.running)))
    assert max(sizes) >= 12, "requests should overlap in the batch"
    for req in reqs:
        assert run.ends[req.id][0] == "done", run.ends[req.id]
        values = req.model == "sine-forecaster"
        assert_same_outputs(run.outputs[req.id], alone(models, req), values)
    spec = [run.ends[r.id][4]["speculative"] for r in reqs if r.op == "speculative"]
    assert all(s["proposed"] >= s["accepted"] for s in spec)
    assert sum(s["accepted"] for s in spec) > 0


def test_sampled_request_with_seed_is_reproducible_in_any_batch(
    models: dict[str, nn.Module],
) -> None:
    def sampled(rid: str) -> WorkRequest:
        req = WorkRequest(rid, "generate", "text-lm", list(b"The "), 16)
        req.sampling.temperature, req.sampling.seed = 0.9, 7
        return req

    alone_run = drive(Scheduler(models, SchedulerSettings()), {0: [sampled("a")]})
    others = [
        WorkRequest(f"o{i}", "generate", "text-lm", list(b"x" * i + b"y"), 20) for i in range(5)
    ]
    batched = drive(Scheduler(models, SchedulerSettings()), {0: others, 2: [sampled("a")]})
    assert alone_run.outputs["a"] == batched.outputs["a"]


def _session_turns(
    models: dict[str, nn.Module], scheduler: Scheduler, model: str, turns: list[list[int]]
) -> tuple[list[list[int]], list[dict[str, int]]]:
    """Run a session over several calls; returns each turn's outputs and usage, and
    checks each turn against a stateless call on the whole history."""
    history: list[int] = []
    outputs, usages = [], []
    for i, new_input in enumerate(turns):
        req = WorkRequest(
            f"turn{i}", "generate", model, history + new_input, 6,
            session_id="sess_a", history_len=len(history),
        )  # fmt: skip
        run = drive(scheduler, {0: [req]})
        stateless = WorkRequest("whole", "generate", model, history + new_input, 6)
        assert run.outputs[req.id] == alone(models, stateless)
        outputs.append(run.outputs[req.id])
        usages.append(run.ends[req.id][3])
        history = history + new_input + run.outputs[req.id]
    return outputs, usages


def test_session_over_several_calls_equals_one_call_on_the_history(
    models: dict[str, nn.Module],
) -> None:
    scheduler = Scheduler(models, SchedulerSettings())
    turns = [list(b"def add(a, b):"), list(b"\n    return"), list(b" a +"), list(b"\n")]
    _, usages = _session_turns(models, scheduler, "text-lm", turns)
    # From the second turn on, the whole history but its last output is already cached.
    for usage, new_input in zip(usages[1:], turns[1:], strict=True):
        history = usage["prompt_tokens"] - len(new_input)
        assert usage["cached_tokens"] == history - 1
    assert scheduler.pool.rebuilds == 0


def test_session_after_eviction_is_rebuilt_with_the_same_outputs(
    models: dict[str, nn.Module],
) -> None:
    scheduler = Scheduler(models, SchedulerSettings())
    turns = [list(b"class A:"), list(b"\n    def"), list(b" f(self")]
    want, _ = _session_turns(models, scheduler, "text-lm", turns)
    evicting = Scheduler(models, SchedulerSettings())
    history: list[int] = []
    for i, new_input in enumerate(turns):
        evicting.drop_session("sess_a")  # as if the budget had evicted it
        req = WorkRequest(
            f"t{i}", "generate", "text-lm", history + new_input, 6,
            session_id="sess_a", history_len=len(history),
        )  # fmt: skip
        run = drive(evicting, {0: [req]})
        assert run.outputs[req.id] == want[i]
        assert run.ends[req.id][3]["cached_tokens"] == 0
        history += new_input + run.outputs[req.id]
    assert evicting.pool.rebuilds == len(turns) - 1


def _cache_bytes(scheduler: Scheduler) -> int:
    """Bytes of every cache tensor the scheduler holds, counted from the tensors."""
    total = scheduler.pool.parked_bytes
    for group in scheduler.groups.values():
        cache = getattr(group, "cache", None)
        if cache is not None:
            total += cache.nbytes()
    return total


def _ten_per_step(reqs: list[WorkRequest]) -> dict[int, list[WorkRequest]]:
    return {i: reqs[10 * i : 10 * i + 10] for i in range((len(reqs) + 9) // 10)}


def test_200_sessions_within_a_small_budget(models: dict[str, nn.Module]) -> None:
    model = "text-lm-draft"
    rng = random.Random(1)
    first = {f"s{i}": [rng.randrange(256) for _ in range(rng.randint(4, 30))] for i in range(200)}
    second = {sid: [rng.randrange(256) for _ in range(rng.randint(1, 8))] for sid in first}

    def two_turns(settings: SchedulerSettings) -> tuple[dict[str, list[int]], Scheduler]:
        scheduler = Scheduler(models, settings)
        peak = [0]

        def check(s: Scheduler) -> None:
            used = _cache_bytes(s)
            peak[0] = max(peak[0], used)
            assert used <= settings.kv_budget_bytes

        reqs = [
            WorkRequest(f"{sid}/1", "generate", model, p, 4, session_id=sid)
            for sid, p in first.items()
        ]
        run = drive(scheduler, _ten_per_step(reqs), check=check)
        history = {sid: first[sid] + run.outputs[f"{sid}/1"] for sid in first}
        reqs = [
            WorkRequest(
                f"{sid}/2", "generate", model, history[sid] + second[sid], 4,
                session_id=sid, history_len=len(history[sid]),
            )
            for sid in first
        ]  # fmt: skip
        run2 = drive(scheduler, _ten_per_step(reqs), check=check)
        assert all(e[0] == "done" for e in [*run.ends.values(), *run2.ends.values()])
        return {**run.outputs, **run2.outputs}, scheduler

    row = models[model].new_cache(1).nbytes()
    small = SchedulerSettings(max_running=8, kv_budget_bytes=10 * row)
    got, constrained = two_turns(small)
    want, roomy = two_turns(SchedulerSettings(max_running=8, kv_budget_bytes=2**31))
    assert got == want
    assert constrained.pool.evictions > 0 and constrained.pool.rebuilds > 0
    assert constrained.pool.peak <= small.kv_budget_bytes
    assert roomy.pool.evictions == 0 and roomy.pool.rebuilds == 0


def test_cancel_stops_within_one_step_and_frees_the_row(models: dict[str, nn.Module]) -> None:
    scheduler = Scheduler(models, SchedulerSettings())
    long = WorkRequest("long", "generate", "text-lm", list(b"hello"), 200)
    other = WorkRequest("other", "generate", "text-lm", list(b"world"), 30)
    with torch.inference_mode():
        scheduler.submit(long)
        scheduler.submit(other)
        for _ in range(3):
            scheduler.step()
        events = scheduler.cancel("long")
        assert events and events[0][0] == "done" and events[0][2] == "cancelled"
        after = scheduler.step()
    assert not [e for e in after if e[1] == "long"]
    assert [e for e in after if e[1] == "other" and e[0] == "token"]
    assert "long" not in scheduler.running
    while scheduler.has_work():
        with torch.inference_mode():
            scheduler.step()
    assert all(len(group) == 0 for group in scheduler.groups.values())  # every row free
    for reclaim in scheduler.pool.reclaimers:  # idle storage goes back when memory is needed
        reclaim()
    assert scheduler.pool.reserved == 0


def test_cancel_of_a_waiting_request_and_of_a_prediction(models: dict[str, nn.Module]) -> None:
    scheduler = Scheduler(models, SchedulerSettings(max_running=1))
    scheduler.submit(WorkRequest("a", "generate", "text-lm", [1, 2], 5))
    scheduler.submit(WorkRequest("b", "generate", "text-lm", [1, 2], 5))
    with torch.inference_mode():
        scheduler.step()
    assert scheduler.cancel("b")[0][2] == "cancelled"
    scheduler.submit(WorkRequest("p", "predict", "sine-regressor", [[[0.0]] * 5]))
    assert scheduler.cancel("p")[0][2] == CANCELLED


def test_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_decoding(
    models: dict[str, nn.Module],
) -> None:
    budget = 64
    scheduler = Scheduler(models, SchedulerSettings(max_batch_tokens=budget))
    running = WorkRequest("running", "generate", "text-lm", list(b"for i in"), 40)
    long_prompt = [random.Random(3).randrange(256) for _ in range(400)]
    long = WorkRequest("long", "generate", "text-lm", long_prompt, 5)
    run = drive(scheduler, {0: [running], 2: [long]})
    # While the long prompt is prefilled, the running stream gets a token every step.
    first_long = next(
        i for i, ev in enumerate(run.steps) if any(e[:2] == ("token", "long") for e in ev)
    )
    assert first_long >= 2 + 400 // budget
    for events in run.steps[2:first_long]:
        assert [e for e in events if e[1] == "running" and e[0] == "token"]
    assert run.outputs["long"] == alone(models, long)
    assert run.outputs["running"] == alone(models, running)


def test_deadline_and_invalid_requests_fail_with_their_reason(
    models: dict[str, nn.Module],
) -> None:
    scheduler = Scheduler(models, SchedulerSettings())
    late = WorkRequest("late", "generate", "text-lm", [1], 300, deadline=time.time() + 0.05)
    bad = [
        WorkRequest("unknown", "generate", "nope", [1], 5),
        WorkRequest("kind", "predict", "text-lm", [[[1.0]]]),
        WorkRequest("token", "generate", "text-lm", [1, 999], 5),
        WorkRequest("long", "generate", "text-lm", [1] * 500, 100),
        WorkRequest("value", "generate", "sine-forecaster", [[float("nan")]], 5),
        WorkRequest("draft", "speculative", "text-lm", [1], 5, draft_model="sine-forecaster"),
        WorkRequest("zero", "generate", "text-lm", [1], 0),
    ]
    run = drive(scheduler, {0: [late, *bad]})
    assert run.ends["late"][:3] == ("error", "late", TIMEOUT)
    for req in bad:
        assert run.ends[req.id][2] == INVALID, run.ends[req.id]


def test_predictions_are_batched_dynamically_and_equal_alone(
    models: dict[str, nn.Module],
) -> None:
    model = models["sine-regressor"]
    rng = random.Random(4)
    reqs = [
        WorkRequest(
            f"p{i}", "predict", "sine-regressor",
            [[[rng.uniform(-1, 1)] for _ in range(rng.randint(16, 80))] for _ in range(3)],
        )
        for i in range(5)
    ]  # fmt: skip
    scheduler = Scheduler(models, SchedulerSettings(predict_max_batch=32, predict_max_wait_s=0.0))
    run = drive(scheduler, {0: reqs})
    batches = [ev for ev in run.steps if any(e[0] == "done" for e in ev)]
    assert len(batches) == 1  # 15 sequences in one padded batch
    with torch.inference_mode():
        for req in reqs:
            for seq, got in zip(req.inputs, run.ends[req.id][4]["outputs"], strict=True):
                want = model(torch.tensor([seq]))[0]
                assert torch.allclose(torch.tensor(got), want, atol=1e-5)


def test_a_worker_sleeps_until_a_regression_batch_is_due(models: dict[str, nn.Module]) -> None:
    scheduler = Scheduler(models, SchedulerSettings(predict_max_wait_s=0.05))
    assert scheduler.idle_wait(1.0) == 1.0  # nothing queued: the longest wait
    scheduler.submit(WorkRequest("p", "predict", "sine-regressor", [[[0.0]] * 8]))
    assert 0.0 < scheduler.idle_wait(1.0) <= 0.05  # no busy-waiting for the batch
    scheduler.submit(WorkRequest("g", "generate", "text-lm", [1], 2))
    assert scheduler.idle_wait(1.0) == 0.0  # a sequence to advance: no wait
