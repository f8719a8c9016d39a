"""Engine claim: the follow-up turn of a session with a 1,024-token history reaches its
first token >= 10x sooner from the session's cache than a stateless request that resends
the whole history.

The demo text-lm stops at 512 positions, so the model here has text-lm's architecture
(config.json of the bundled checkpoint) with max_seq_len 2048 and RANDOM weights, saved to
a temporary model directory: time to first token depends on the shapes, not on the
weights. One engine (one worker process, the engine's default threads and OpenMP policy).

Each round, on a fresh session: the first call sends a HISTORY_TOKENS-token history
(max_new_tokens 1; untimed, its cache is parked when it ends), then, in alternating order:
- session: the follow-up turn, FOLLOW_UP_TOKENS new tokens, max_new_tokens NEW_TOKENS, in
  the session (the worker restores the parked cache and prefills only the new tokens; the
  round counts only if `usage["cached_tokens"] > 1000`);
- stateless: a plain `generate` request with the same whole sequence (history + the first
  call's output + the follow-up, 1,041 tokens), prefilled from nothing;
- short (a reference, no claim): a plain request of only as many tokens as the follow-up
  feeds (the last ones of that sequence), the floor a cached turn could reach.
The first call's cache holds the history only (its one output was never fed back), so the
follow-up feeds that output plus the follow-up tokens: 17 tokens.
TTFT: from the call (`session_generate` / `request`) to the first token event, as the
caller sees it. Both must produce the same tokens (cached vs recomputed). Reported: median
TTFTs over the rounds, the ratio of the medians (the verdict) and the median of the
per-round ratios.

Run: `.venv/bin/python benchmarks/bench_session_ttft.py [--repeats R] [--device cuda]`;
writes benchmarks/results/session_ttft.json (session_ttft_<device>.json elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.engine_harness import (
    add_device_arg,
    byte_prompts,
    engine_device,
    result_name,
    running_engine,
)
from benchmarks.harness import print_table, verdict, write_results
from model_core import checkpoint
from model_core.recipes import bundled_dir
from server.engine.engine import Engine, EngineError, RequestStream
from server.engine.settings import EngineSettings

BASE_MODEL = "text-lm"
MODEL = "text-lm-2k"
MAX_SEQ_LEN = 2048
HISTORY_TOKENS = 1024
FOLLOW_UP_TOKENS = 16
NEW_TOKENS = 8
MIN_CACHED = 1000
TARGET_RATIO = 10.0
CLAIM = (
    f"session follow-up TTFT with a {HISTORY_TOKENS}-token history >= {TARGET_RATIO:g}x "
    "sooner than resending the history statelessly"
)


def write_long_model(root: Path) -> dict[str, Any]:
    """text-lm's architecture with MAX_SEQ_LEN positions and random weights, saved as
    `root/MODEL`; returns its config."""
    base = checkpoint.load_config(bundled_dir() / BASE_MODEL)
    config = dataclasses.replace(base, max_seq_len=MAX_SEQ_LEN)
    torch.manual_seed(0)
    checkpoint.save(config.build(), root / MODEL)
    return config.to_dict()


@dataclasses.dataclass
class Turn:
    ttft_s: float
    outputs: list[int]
    usage: dict[str, int]


async def timed_turn(open_stream: Callable[[], Awaitable[RequestStream]]) -> Turn:
    """Time from opening the stream to its first token; then read it to the end."""
    start = time.perf_counter()
    stream = await open_stream()
    ttft = 0.0
    outputs: list[int] = []
    async for event in stream:
        if event[0] == "token":
            if not outputs:
                ttft = time.perf_counter() - start
            outputs.append(event[3])
        elif event[0] == "error":
            raise EngineError(event[2], event[3])
        elif event[0] == "done":
            return Turn(ttft, outputs, event[3])
    raise AssertionError("a stream ends with done or error")


VARIANTS = ("session", "stateless", "short")


async def one_round(
    eng: Engine, history: list[int], follow_up: list[int], rotation: int
) -> dict[str, Turn]:
    """Prime a fresh session with `history`, then time its follow-up turn, the stateless
    request and the short one, in VARIANTS order rotated by `rotation`."""
    session = await eng.open_session(MODEL)
    first = await (await eng.session_generate(session.id, history, max_new_tokens=1)).result()
    whole = history + first.outputs + follow_up
    fed = len(first.outputs) + len(follow_up)  # what the session's cache lacks

    async def session_turn() -> RequestStream:
        return await eng.session_generate(session.id, follow_up, max_new_tokens=NEW_TOKENS)

    async def stateless() -> RequestStream:
        return eng.request("generate", MODEL, whole, max_new_tokens=NEW_TOKENS)

    async def short() -> RequestStream:
        return eng.request("generate", MODEL, whole[-fed:], max_new_tokens=NEW_TOKENS)

    opens = {"session": session_turn, "stateless": stateless, "short": short}
    turns: dict[str, Turn] = {}
    k = rotation % len(VARIANTS)
    for name in VARIANTS[k:] + VARIANTS[:k]:
        turns[name] = await timed_turn(opens[name])
    await eng.close_session(session.id)
    cached = turns["session"].usage["cached_tokens"]
    if cached <= MIN_CACHED:
        raise RuntimeError(f"the follow-up missed the session cache: cached_tokens {cached}")
    return turns


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (medians used)")
    parser.add_argument(
        "--threads", type=int, default=None, help="worker torch threads (default: the engine's)"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    add_device_arg(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    args.device = engine_device(args.device)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # this process only runs the front end
    rounds = args.repeats + 1  # round 0 is a warmup
    histories = byte_prompts(rounds, HISTORY_TOKENS, seed=10)
    follow_ups = byte_prompts(rounds, FOLLOW_UP_TOKENS, seed=11)
    results: list[dict[str, Turn]] = []
    with tempfile.TemporaryDirectory(prefix="kvserve-bench-") as tmp:
        config = write_long_model(Path(tmp))
        settings = EngineSettings(
            model_dir=tmp,
            models=[MODEL],
            devices=[args.device],
            threads_per_worker=args.threads,
        )
        with running_engine(settings) as (eng, run):
            for r in range(rounds):
                results.append(run(one_round(eng, histories[r], follow_ups[r], r)))
            worker_stats = eng.stats()["workers"]
    results = results[1:]

    ttft = {name: [t[name].ttft_s for t in results] for name in VARIANTS}
    session, stateless = ttft["session"], ttft["stateless"]
    ratio = statistics.median(stateless) / statistics.median(session)
    paired = statistics.median(s / c for s, c in zip(stateless, session, strict=True))
    identical = sum(t["session"].outputs == t["stateless"].outputs for t in results)
    cached = [t["session"].usage["cached_tokens"] for t in results]
    prompt_tokens = results[0]["stateless"].usage["prompt_tokens"]
    fed = {
        name: results[0][name].usage["prompt_tokens"] - results[0][name].usage["cached_tokens"]
        for name in VARIANTS
    }

    print(
        f"\n{MODEL}: {BASE_MODEL}'s architecture, max_seq_len {MAX_SEQ_LEN}, random weights "
        f"(TTFT depends on shapes, not weights); device {args.device}, "
        f"{settings.threads(args.device)} torch thread(s) per worker, OMP_WAIT_POLICY="
        f"{settings.omp_wait_policy}; {args.repeats} rounds, fresh session each, medians\n"
    )
    labels = {
        "session": "session follow-up",
        "stateless": "stateless, whole history",
        "short": "reference: stateless, only the fed tokens",
    }
    print_table(
        ["request", "tokens fed", "tokens from cache", "TTFT p50 ms", "min ms", "max ms"],
        [
            [
                labels[name],
                fed[name],
                f"{min(cached)}-{max(cached)}" if name == "session" else 0,
                1e3 * statistics.median(ttft[name]),
                1e3 * min(ttft[name]),
                1e3 * max(ttft[name]),
            ]
            for name in VARIANTS
        ],
    )
    print()
    print_table(
        ["measure", "value"],
        [
            ["ratio of median TTFTs (stateless / session)", f"{ratio:.1f}x"],
            ["median of per-round ratios", f"{paired:.1f}x"],
            ["same tokens (session vs stateless)", f"{identical}/{len(results)} rounds"],
            [
                "session TTFT / short request's TTFT",
                f"{statistics.median(session) / statistics.median(ttft['short']):.2f}",
            ],
        ],
    )
    print()
    line = verdict(
        CLAIM,
        ratio >= TARGET_RATIO,
        f"{ratio:.1f}x: {1e3 * statistics.median(stateless):.1f} ms vs "
        f"{1e3 * statistics.median(session):.1f} ms",
    )
    write_results(
        result_name("session_ttft", args.device),
        {
            "claim": CLAIM,
            "config": {
                "model": MODEL,
                "model_config": config,
                "weights": "random (TTFT does not depend on them)",
                "device": args.device,
                "worker_threads": settings.threads(args.device),
                "omp_wait_policy": settings.omp_wait_policy,
                "history_tokens": HISTORY_TOKENS,
                "follow_up_tokens": FOLLOW_UP_TOKENS,
                "stateless_prompt_tokens": prompt_tokens,
                "new_tokens": NEW_TOKENS,
                "repeats": args.repeats,
                "max_batch_tokens": settings.scheduler.max_batch_tokens,
                "torch_version": torch.__version__,
            },
            "tokens_fed": fed,
            "ttft_s": ttft,
            "session_cached_tokens": cached,
            "ttft_median_s": {name: statistics.median(ttft[name]) for name in VARIANTS},
            "ratio_of_medians": ratio,
            "median_paired_ratio": paired,
            "identical_rounds": identical,
            "worker_stats": worker_stats,
            "passed": ratio >= TARGET_RATIO,
            "verdict": line,
        },
    )


if __name__ == "__main__":
    main()
