"""The engine and model_core on a CUDA device (skipped without one; run by
benchmarks/gpu_check.sh): the same properties as on the CPU, and half precision."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
from torch import nn

from server.engine.engine import Engine
from server.engine.protocol import WorkRequest
from server.engine.scheduler import Scheduler
from server.engine.scheduler_settings import SchedulerSettings
from server.engine.settings import EngineSettings
from server.model_repository import ModelRepository
from tests.engine_helpers import alone, assert_same_outputs, drive

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MODELS = ["text-lm", "text-lm-draft", "sine-forecaster", "digits-seq2seq", "sine-regressor"]


def _models(dtype: torch.dtype) -> dict[str, nn.Module]:
    loaded, errors = ModelRepository().load_all(MODELS, device="cuda", dtype=dtype)
    assert not errors
    return loaded


def _requests(count: int) -> list[WorkRequest]:
    rng = random.Random(0)
    reqs = []
    for i in range(count):
        prompt = [rng.randrange(256) for _ in range(rng.randint(1, 40))]
        if i % 3 == 0:
            req = WorkRequest(f"s{i}", "speculative", "text-lm", prompt, rng.randint(1, 24))
            req.draft_model = "text-lm-draft"
        elif i % 3 == 1:
            digits = [rng.randrange(10) for _ in range(rng.randint(1, 32))]
            req = WorkRequest(
                f"d{i}", "seq2seq", "digits-seq2seq", digits, 40, start=[11], stop=[12]
            )
        else:
            req = WorkRequest(f"g{i}", "generate", "text-lm", prompt, rng.randint(1, 24))
        reqs.append(req)
    return reqs


def test_batched_equals_alone_on_cuda() -> None:
    models = _models(torch.float32)
    reqs = _requests(24)
    run = drive(Scheduler(models, SchedulerSettings()), {i: [r] for i, r in enumerate(reqs)})
    for req in reqs:
        assert_same_outputs(run.outputs[req.id], alone(models, req), values=False)


def test_half_precision_agrees_with_float32_on_most_first_tokens() -> None:
    reqs = [r for r in _requests(24) if r.op == "generate"]
    full = drive(Scheduler(_models(torch.float32), SchedulerSettings()), {0: reqs})
    half = drive(Scheduler(_models(torch.float16), SchedulerSettings()), {0: reqs})
    same = sum(full.outputs[r.id][:1] == half.outputs[r.id][:1] for r in reqs)
    assert same >= 0.75 * len(reqs), (same, len(reqs))


def test_engine_serves_on_a_cuda_worker() -> None:
    async def scenario() -> tuple[list[int], list[list[float]]]:
        settings = EngineSettings(models=MODELS, devices=["cuda:0"])
        async with Engine(settings) as engine:
            tokens = await engine.request(
                "generate", "text-lm", [1, 2, 3], max_new_tokens=5
            ).result()
            predictions = await engine.predict("sine-regressor", [[[0.1]] * 32])
            return tokens.outputs, predictions

    tokens, predictions = asyncio.run(scenario())
    assert len(tokens) == 5 and len(predictions) == 1 and len(predictions[0]) == 3
