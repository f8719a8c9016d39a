"""Shared helpers of the benchmark scripts: side-by-side timing, tables, JSON results.

Timing runs the compared functions interleaved (A, B, C, A, B, C, ...) after a warmup,
so drift on a shared, noisy machine hits every variant alike; each variant reports the
median of its repeats. A function may time itself by returning seconds (e.g. to leave a
prefill out); otherwise its wall time is used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

Timed = Callable[[], float | None]


def parse_args(description: str) -> argparse.Namespace:
    """The common command line: `--quick` for a smaller run, `--threads N` for torch's
    intra-op threads (default 1; 0 keeps torch's own choice, one per core).

    One thread is the default because these ratios are measured on shared machines: with
    one OpenMP thread per core, a core taken by another process stalls every small op at
    its barrier, which swamps decode timings (many tiny ops per token).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 = torch's default, one per core)",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def _run_once(fn: Timed) -> float:
    start = time.perf_counter()
    own = fn()
    wall = time.perf_counter() - start
    return wall if own is None else float(own)


def measure(
    fns: dict[str, Timed],
    repeats: int,
    warmup: int | dict[str, int] = 1,
    runs: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time each function `repeats` times (or `runs[name]` times), interleaved, after
    `warmup` untimed rounds (an int for all, or per name; missing names get none).

    Returns, per name, `median_s`, `min_s` and all `times_s`. The order of the functions
    alternates between rounds so that none always runs right after the same neighbour.
    """
    names = list(fns)
    warm = warmup if isinstance(warmup, dict) else dict.fromkeys(names, warmup)
    counts = {name: (runs or {}).get(name, repeats) for name in names}
    for r in range(max(warm.values(), default=0)):
        for name in names:
            if r < warm.get(name, 0):
                fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(counts.values(), default=0)):
        for name in names if r % 2 == 0 else reversed(names):
            if r < counts[name]:
                times[name].append(_run_once(fns[name]))
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts}
        for name, ts in times.items()
    }


def paired_ratio(results: dict[str, dict[str, Any]], slower: str, faster: str) -> float:
    """Median over rounds of `slower` time / `faster` time, each pair from one round of
    `measure` (run back to back), so drift between rounds cancels out."""
    pairs = zip(results[slower]["times_s"], results[faster]["times_s"], strict=False)
    return statistics.median(s / f for s, f in pairs)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(markdown_table(headers, rows), flush=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if hasattr(os, "sched_getaffinity"):  # Linux
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    try:
        import transformers

        info["transformers_version"] = transformers.__version__
    except ImportError:
        pass
    return info


def verdict(claim: str, passed: bool, detail: str) -> str:
    """Print and return the PASS/FAIL line of a claim."""
    line = f"{'PASS' if passed else 'FAIL'}: {claim} ({detail})"
    print(line, flush=True)
    return line


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write `payload` plus machine info to `benchmarks/results/<name>.json`."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results written to {path.relative_to(REPO_ROOT)}", flush=True)
    return path
