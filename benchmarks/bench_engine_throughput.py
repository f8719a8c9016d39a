"""Engine claim: at 32 streams the engine keeps >= 0.8 of a bare batched decode loop's
throughput, and 32 concurrent streams run >= 3x faster than the same 32 requests served
one at a time.

Demo text-lm (byte-level, d=256, 6 layers, GQA), greedy, PROMPT_TOKENS-byte prompts (a
different one per stream), `--new-tokens` M new tokens each (default 64). Per number of
streams N (`--streams`, default 1, 8, 32), interleaved rounds (harness.measure) of:

- engine: one `Engine` (one worker process, `--threads` torch threads, the engine's
  OpenMP wait policy); N concurrent `eng.request("generate", ...)` streams consumed with
  `async for`, timed from the first submission to the last `done` event;
- sequential: the same N requests through the same engine, one after another;
- bare: the ceiling, a batched greedy loop of model_core in a spawned process with the
  worker's thread count and OpenMP environment: `new_cache(N, capacity=P + M)`, one
  prefill `step` of the (N, P) prompts, then M - 1 one-token steps; no scheduler, no pipes,
  no per-token Python bookkeeping, tokens stay on the device until the end;
- staggered (N = 32, unless `--no-stagger`): the 32 streams start at random offsets within
  the first STAGGER_S seconds, so they join a running batch (prefill between decode steps).

tokens/s = N * M / median time of the repeats (all include the prefill). efficiency is
the median over rounds of bare time / engine time, speedup the median over rounds of
sequential time / engine time (pairs from the same round, so drift cancels). Every stream's
tokens are compared with the bare loop's row (batched vs one sequence at a time).

Run: `.venv/bin/python benchmarks/bench_engine_throughput.py [--threads N] [--new-tokens M]
[--repeats R] [--device cuda]`; writes benchmarks/results/engine_throughput.json
(engine_throughput_<device>.json for another device).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.engine_harness import (
    MODEL,
    PROMPT_TOKENS,
    StreamsRun,
    add_device_arg,
    byte_prompts,
    engine_device,
    result_name,
    run_sequential,
    run_streams,
    running_engine,
)
from benchmarks.harness import measure, paired_ratio, print_table, verdict, write_results
from server.engine.pool import temporary_environ
from server.engine.settings import (
    DEFAULT_OMP_WAIT_POLICY,
    EngineSettings,
    default_threads,
)
from server.model_repository import ModelRepository

STAGGER_S = 0.5
TARGET_EFFICIENCY = 0.8
TARGET_SPEEDUP = 3.0
CLAIM_STREAMS = 32
CLAIMS = (
    f"engine efficiency >= {TARGET_EFFICIENCY} of a bare batched loop at {CLAIM_STREAMS} streams",
    f"{CLAIM_STREAMS} concurrent streams >= {TARGET_SPEEDUP:g}x serving them one at a time",
)


# ---- the bare loop ---------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@torch.inference_mode()
def bare_decode(
    model: nn.Module, prompts: list[list[int]], new_tokens: int, device: str
) -> tuple[float, list[list[int]]]:
    """Greedy batched decoding with model_core alone: (seconds, tokens per row)."""
    x = torch.tensor(prompts, dtype=torch.long, device=device)  # (B, P)
    synchronize(device)
    start = time.perf_counter()
    cache = model.new_cache(x.shape[0], capacity=x.shape[1] + new_tokens)
    nxt = model.step(x, cache)[:, -1].argmax(dim=-1)  # (B,)
    out = [nxt]
    for _ in range(new_tokens - 1):
        nxt = model.step(nxt[:, None], cache)[:, -1].argmax(dim=-1)
        out.append(nxt)
    tokens = torch.stack(out, dim=1)  # (B, M)
    synchronize(device)
    return time.perf_counter() - start, tokens.tolist()


def _bare_main(conn: Connection, device: str, threads: int) -> None:
    """The bare loop's process: load text-lm, then run `(prompts, new_tokens)` commands."""
    torch.set_num_threads(threads)
    model = ModelRepository().load(MODEL, device)
    conn.send("ready")
    while (command := conn.recv()) is not None:
        conn.send(bare_decode(model, *command, device))


class BareDecoder:
    """The bare loop in a spawned process started with the worker's environment
    (OMP_WAIT_POLICY, and OMP_NUM_THREADS on CPU, as the engine's pool sets them), so
    neither this process's threads nor its imports skew it."""

    def __init__(self, device: str, threads: int, omp_wait_policy: str) -> None:
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        env = {"OMP_WAIT_POLICY": omp_wait_policy}
        if device == "cpu":
            env["OMP_NUM_THREADS"] = str(threads)
        self.process = context.Process(
            target=_bare_main, args=(child, device, threads), daemon=True
        )
        with temporary_environ(env):
            self.process.start()
        child.close()
        assert self.conn.recv() == "ready"

    def run(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
        self.conn.send((prompts, new_tokens))
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(10)


# ---- this benchmark --------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the worker and of the bare loop (default: the engine's "
        "default for the device, server.engine.settings.default_threads)",
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="M tokens per stream")
    parser.add_argument("--streams", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median used)")
    parser.add_argument("--no-stagger", action="store_true", help="skip the staggered run")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 16 new tokens")
    add_device_arg(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 16
    args.streams = [int(n) for n in args.streams.split(",")]
    args.device = engine_device(args.device)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # this process only runs the front end
    m, streams = args.new_tokens, args.streams
    settings = EngineSettings(
        models=[MODEL], devices=[args.device], threads_per_worker=args.threads
    )
    prompts = byte_prompts(max(streams), PROMPT_TOKENS, seed=0)
    stagger = not args.no_stagger and CLAIM_STREAMS in streams
    rng = random.Random(1)
    offsets = [rng.uniform(0.0, STAGGER_S) for _ in range(CLAIM_STREAMS)]
    runs: dict[str, list[StreamsRun]] = {}
    bare_tokens: dict[int, list[list[int]]] = {}

    bare = BareDecoder(args.device, settings.threads(args.device), settings.omp_wait_policy)
    try:
        with running_engine(settings) as (eng, run):

            def engine_fn(name: str, make: Callable[[], Awaitable[StreamsRun]]) -> Any:
                def timed() -> float:
                    result = run(make())
                    if result.tokens != len(result.outputs) * m:
                        raise RuntimeError(f"{name}: {result.tokens} tokens, expected M each")
                    runs.setdefault(name, []).append(result)
                    return result.wall_s

                return timed

            def bare_fn(n: int) -> Any:
                def timed() -> float:
                    seconds, bare_tokens[n] = bare.run(prompts[:n], m)
                    return seconds

                return timed

            fns: dict[str, Any] = {}
            warmup: dict[str, int] = {}
            for n in streams:
                p = prompts[:n]
                fns[f"engine x{n}"] = engine_fn(f"engine x{n}", lambda p=p: run_streams(eng, p, m))
                fns[f"bare x{n}"] = bare_fn(n)
                warmup[f"engine x{n}"] = warmup[f"bare x{n}"] = 1
                if n > 1:
                    fns[f"sequential x{n}"] = engine_fn(
                        f"sequential x{n}", lambda p=p: run_sequential(eng, p, m)
                    )
            if stagger:
                p = prompts[:CLAIM_STREAMS]
                fns["staggered x32"] = engine_fn(
                    "staggered x32", lambda: run_streams(eng, p, m, offsets)
                )
            res = measure(fns, repeats=args.repeats, warmup=warmup)
            worker_stats = eng.stats()["workers"]
    finally:
        bare.close()
    for name, count in warmup.items():
        if name in runs:
            runs[name] = runs[name][count:]  # the warmup rounds' runs

    print(
        f"\n{MODEL} greedy, {PROMPT_TOKENS}-token prompts, {m} new tokens per stream, "
        f"device {args.device}, {settings.threads(args.device)} torch thread(s) per worker, "
        f"OMP_WAIT_POLICY={settings.omp_wait_policy}, median of {args.repeats} interleaved "
        f"rounds; efficiency and speedup: median of per-round ratios\n"
    )
    rows, per_n = [], {}
    for n in streams:
        eng_name, bare_name, seq_name = f"engine x{n}", f"bare x{n}", f"sequential x{n}"
        eng_tps = n * m / res[eng_name]["median_s"]
        bare_tps = n * m / res[bare_name]["median_s"]
        efficiency = paired_ratio(res, bare_name, eng_name)
        seq_tps = speedup = None
        if seq_name in res:
            seq_tps = n * m / res[seq_name]["median_s"]
            speedup = paired_ratio(res, seq_name, eng_name)
        ttfts = [t for r in runs[eng_name] for t in r.ttft_s]
        same = sum(o == b for o, b in zip(runs[eng_name][-1].outputs, bare_tokens[n], strict=True))
        per_n[n] = {
            "engine_tokens_per_s": eng_tps,
            "bare_tokens_per_s": bare_tps,
            "efficiency": efficiency,
            "sequential_tokens_per_s": seq_tps,
            "speedup_vs_sequential": speedup,
            "engine_ttft_p50_s": statistics.median(ttfts),
            "engine_ttft_max_s": max(ttfts),
            "streams_identical_to_bare": same,
        }
        rows.append(
            [
                f"{n}",
                eng_tps,
                bare_tps,
                efficiency,
                "-" if seq_tps is None else seq_tps,
                "-" if speedup is None else f"{speedup:.2f}x",
                1e3 * statistics.median(ttfts),
                f"{same}/{n}",
            ]
        )
    staggered = None
    if stagger:
        st_runs = runs["staggered x32"]
        st_tps = CLAIM_STREAMS * m / res["staggered x32"]["median_s"]
        ttfts = [t for r in st_runs for t in r.ttft_s]
        staggered = {
            "stagger_s": STAGGER_S,
            "engine_tokens_per_s": st_tps,
            "vs_simultaneous_engine": paired_ratio(res, "engine x32", "staggered x32"),
            "efficiency_incl_ramp": paired_ratio(res, "bare x32", "staggered x32"),
            "engine_ttft_p50_s": statistics.median(ttfts),
            "engine_ttft_max_s": max(ttfts),
        }
        rows.append(
            [
                f"32 staggered over {STAGGER_S:g} s",
                st_tps,
                "-",
                "-",
                "-",
                "-",
                1e3 * staggered["engine_ttft_p50_s"],
                "-",
            ]
        )
    print_table(
        [
            "streams",
            "engine tok/s",
            "bare tok/s",
            "efficiency",
            "sequential tok/s",
            "speedup",
            "engine TTFT p50 ms",
            "same tokens as bare",
        ],
        rows,
    )
    if staggered is not None:
        print(
            f"\nstaggered: {staggered['engine_tokens_per_s']:.0f} tok/s, "
            f"{staggered['vs_simultaneous_engine']:.2f} of the simultaneous start's rate "
            f"(its time includes the {STAGGER_S:g} s ramp), "
            f"{staggered['efficiency_incl_ramp']:.2f} of bare x32 counting the ramp"
        )
    print()
    lines = []
    if CLAIM_STREAMS in per_n:
        at = per_n[CLAIM_STREAMS]
        lines.append(
            verdict(
                CLAIMS[0],
                at["efficiency"] >= TARGET_EFFICIENCY,
                f"efficiency {at['efficiency']:.2f}: engine {at['engine_tokens_per_s']:.0f} "
                f"tok/s, bare {at['bare_tokens_per_s']:.0f} tok/s",
            )
        )
        lines.append(
            verdict(
                CLAIMS[1],
                at["speedup_vs_sequential"] >= TARGET_SPEEDUP,
                f"{at['speedup_vs_sequential']:.2f}x: {at['engine_tokens_per_s']:.0f} vs "
                f"{at['sequential_tokens_per_s']:.0f} tok/s",
            )
        )
    write_results(
        result_name("engine_throughput", args.device),
        {
            "claims": list(CLAIMS),
            "config": {
                "model": MODEL,
                "device": args.device,
                "worker_threads": settings.threads(args.device),
                "omp_wait_policy": settings.omp_wait_policy,
                "default_threads": default_threads(args.device, 1),
                "default_omp_wait_policy": DEFAULT_OMP_WAIT_POLICY,
                "prompt_tokens": PROMPT_TOKENS,
                "new_tokens": m,
                "streams": streams,
                "repeats": args.repeats,
                "statistic": "median of interleaved repeats; ratios: median of per-round ratios",
                "bare_cache_capacity": f"prompt + new tokens ({PROMPT_TOKENS + m})",
                "stagger_offsets_s": offsets if stagger else None,
                "torch_version": torch.__version__,
            },
            "per_streams": {str(n): v for n, v in per_n.items()},
            "staggered": staggered,
            "timings": res,
            "worker_stats": worker_stats,
            "passed": all(line.startswith("PASS") for line in lines) if lines else None,
            "verdicts": lines,
        },
    )


if __name__ == "__main__":
    main()
