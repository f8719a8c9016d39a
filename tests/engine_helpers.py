"""Driving a Scheduler in-process, and the served-alone oracle (model_core's own loops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model_core.generation import generate, generate_seq2seq
from server.engine.protocol import Event, WorkRequest
from server.engine.scheduler import Scheduler


@dataclass
class Run:
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    ends: dict[str, Event] = field(default_factory=dict)
    steps: list[list[Event]] = field(default_factory=list)


def drive(
    scheduler: Scheduler,
    arrivals: dict[int, list[WorkRequest]],
    max_steps: int = 10_000,
    check: Any = None,
) -> Run:
    """Submit `arrivals[i]` before step i; step until every request has ended. `check`
    is called after every step (e.g. to assert a memory bound)."""
    run = Run()
    expected = sum(len(r) for r in arrivals.values())
    with torch.inference_mode():
        for step in range(max_steps):
            events: list[Event] = []
            for req in arrivals.get(step, []):
                run.outputs[req.id] = []
                events += scheduler.submit(req)
            events += scheduler.step()
            run.steps.append(events)
            for event in events:
                if event[0] == "token":
                    run.outputs[event[1]].append(event[3])
                elif event[0] in ("done", "error"):
                    run.ends[event[1]] = event
            if check is not None:
                check(scheduler)
            if len(run.ends) == expected and not scheduler.has_work():
                return run
    raise AssertionError(f"requests did not finish in {max_steps} steps")


def alone(models: dict[str, nn.Module], req: WorkRequest) -> list[Any]:
    """What the request produces served alone, by model_core's generation loops (greedy)."""
    model = models[req.model]
    device = next(model.parameters()).device
    if req.op == "seq2seq":
        source = torch.tensor([req.inputs], device=device)
        start = torch.tensor([req.start], device=device)
        out = generate_seq2seq(model, source, start, req.max_new_tokens)[0].tolist()
    else:
        dtype = torch.long if model.config.uses_tokens else torch.float32
        prompt = torch.tensor([req.inputs], dtype=dtype, device=device)
        out = generate(model, prompt, req.max_new_tokens)[0].tolist()
    for i, token in enumerate(out):
        if isinstance(token, int) and token in req.stop:
            return out[: i + 1]
    return out


def assert_same_outputs(got: list[Any], want: list[Any], values: bool) -> None:
    if values:
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5), (got, want)
    else:
        assert got == want
