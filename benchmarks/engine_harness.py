"""What the engine benchmarks share: prompts, streams through an Engine, an engine on a
private event loop, the --device flag."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.engine.engine import Engine, EngineError
from server.engine.settings import EngineSettings

MODEL = "text-lm"
PROMPT_TOKENS = 16

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]


def byte_prompts(count: int, length: int, seed: int = 0) -> list[list[int]]:
    """`count` different prompts of `length` printable ASCII bytes (token ids 32-126)."""
    rng = random.Random(seed)
    return [[rng.randrange(32, 127) for _ in range(length)] for _ in range(count)]


def result_name(base: str, device: str) -> str:
    """The results file's name: `base` on CPU, `base_<device>` elsewhere (cuda:0 -> cuda0)."""
    return base if device == "cpu" else f"{base}_{device.replace(':', '')}"


@dataclass
class StreamsRun:
    """N streams served by an engine: from the first submission to the last event."""

    wall_s: float
    ttft_s: list[float]  # per stream: submission -> first token event
    outputs: list[list[int]]  # per stream: its tokens

    @property
    def tokens(self) -> int:
        return sum(len(o) for o in self.outputs)


async def stream_tokens(
    eng: Engine, prompt: list[int], new_tokens: int, model: str = MODEL
) -> tuple[float, list[int]]:
    """One generate request consumed with `async for`: (TTFT s, its tokens)."""
    start = time.perf_counter()
    ttft = 0.0
    tokens: list[int] = []
    async for event in eng.request("generate", model, prompt, max_new_tokens=new_tokens):
        if event[0] == "token":
            if not tokens:
                ttft = time.perf_counter() - start
            tokens.append(event[3])
        elif event[0] == "error":
            raise EngineError(event[2], event[3])
    return ttft, tokens


async def run_streams(
    eng: Engine,
    prompts: list[list[int]],
    new_tokens: int,
    offsets_s: list[float] | None = None,
    model: str = MODEL,
) -> StreamsRun:
    """Every prompt as a concurrent stream (stream i starts `offsets_s[i]` s in)."""
    start = time.perf_counter()

    async def one(i: int) -> tuple[float, list[int]]:
        if offsets_s is not None:
            await asyncio.sleep(max(0.0, offsets_s[i] - (time.perf_counter() - start)))
        return await stream_tokens(eng, prompts[i], new_tokens, model)

    done = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    wall = time.perf_counter() - start
    return StreamsRun(wall, [d[0] for d in done], [d[1] for d in done])


async def run_sequential(eng: Engine, prompts: list[list[int]], new_tokens: int) -> StreamsRun:
    """The same requests, each started when the previous one ended."""
    start = time.perf_counter()
    done = [await stream_tokens(eng, p, new_tokens) for p in prompts]
    return StreamsRun(time.perf_counter() - start, [d[0] for d in done], [d[1] for d in done])


@contextlib.contextmanager
def running_engine(settings: EngineSettings) -> Iterator[tuple[Engine, Run[Any]]]:
    """An engine on a private event loop, and `run(coro)` to drive it from plain code
    (so harness.measure can time async work)."""
    loop = asyncio.new_event_loop()
    eng = Engine(settings)
    loop.run_until_complete(eng.start())
    try:
        yield eng, loop.run_until_complete
    finally:
        loop.run_until_complete(eng.stop())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="cpu", help="the engine's device: cpu (default), cuda:0, ..."
    )


def engine_device(device: str) -> str:
    """`cuda` means the first GPU (the engine names devices fully)."""
    return "cuda:0" if device == "cuda" else device


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in (0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads); None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" closing the name, utime and stime are fields 12 and 13 (0-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
