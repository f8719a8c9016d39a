"""Where a decode step's time goes: the scheduler in-process (no worker process, no pipes)
against the bare batched loop, at one batch size, on any device; then the torch
profiler's top operators of a few steps of each.

Not a claim (no JSON): a tool to find engine overhead, e.g. on CUDA where a step is a
few hundred small kernels and every host-device sync shows.

Run: `.venv/bin/python benchmarks/profile_scheduler.py [--device cuda] [--streams 32]
[--new-tokens 64] [--ragged]`
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.profiler import ProfilerActivity, profile

from server.engine.protocol import WorkRequest
from server.engine.scheduler import Scheduler
from server.engine.scheduler_settings import SchedulerSettings
from server.model_repository import ModelRepository


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_scheduler(models: dict, prompts: list[list[int]], new: int, device: str) -> float:
    scheduler = Scheduler(models, SchedulerSettings(max_running=len(prompts)))
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            scheduler.submit(WorkRequest(f"r{i}", "generate", "text-lm", prompt, new))
        while scheduler.has_work():
            scheduler.step()
    sync(device)
    return time.perf_counter() - start


def run_bare(model: torch.nn.Module, prompts: list[list[int]], new: int, device: str) -> float:
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max())
    x = torch.tensor([p + [0] * (width - len(p)) for p in prompts], device=device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        cache = model.new_cache(len(prompts), capacity=width + new)
        out = model.step(x, cache, lengths)
        nxt = out[torch.arange(len(prompts), device=device), lengths - 1].argmax(-1)
        for _ in range(new - 1):
            nxt = model.step(nxt[:, None], cache)[:, -1].argmax(-1)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ragged", action="store_true", help="prompts of 8-24 tokens")
    args = parser.parse_args()
    device = "cuda:0" if args.device == "cuda" else args.device
    torch.set_num_threads(args.threads)
    models = {"text-lm": ModelRepository().load("text-lm", device)}
    rng = random.Random(0)
    prompts = [
        [rng.randrange(32, 127) for _ in range(rng.randint(8, 24) if args.ragged else 16)]
        for _ in range(args.streams)
    ]
    new = args.new_tokens
    for _ in range(2):  # warm up
        run_scheduler(models, prompts, 4, device)
        run_bare(models["text-lm"], prompts, 4, device)
    times = {"scheduler": [], "bare": []}
    for _ in range(3):
        times["scheduler"].append(run_scheduler(models, prompts, new, device))
        times["bare"].append(run_bare(models["text-lm"], prompts, new, device))
    tokens = args.streams * new
    s, b = min(times["scheduler"]), min(times["bare"])
    print(f"{device}, {args.streams} streams x {new} tokens, ragged={args.ragged}")
    print(f"scheduler {tokens / s:.0f} tok/s, bare {tokens / b:.0f} tok/s, ratio {b / s:.2f}")
    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    for name, fn in (
        ("scheduler", lambda: run_scheduler(models, prompts, 16, device)),
        ("bare", lambda: run_bare(models["text-lm"], prompts, 16, device)),
    ):
        with profile(activities=activities) as prof:
            fn()
        print(f"\n--- {name}: top operators by self CPU time (16 tokens) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
