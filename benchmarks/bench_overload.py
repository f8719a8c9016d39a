"""Overload: a Locust run at 4x the server's measured capacity; nothing may be lost.

One `kvserve serve --models text-lm` with its default settings (one CPU worker,
max_running 32, max_waiting 64, the default 60 s Locust read timeout of
benchmarks/overload_locustfile.py). Streamed POST /v1/generate requests, PROMPT_TOKENS
prompt bytes and NEW_TOKENS new tokens each, in three phases, Locust headless each time:

1. before: capacity. CAPACITY_USERS users back to back (closed loop) for `--measure-s`
   seconds; capacity C = completed requests/s ("generate ok" count / run time).
2. overload: `--users` users (well over HELD = max_running + max_waiting, so that the
   queue fills and the server must refuse), each paced at one request every
   (users - HELD) / (4 C) seconds (Locust's constant_pacing): the users not waiting on
   the server alone offer 4 C requests/s, so at least that much is offered, for
   `--overload-s` seconds (120 by default). The server's RSS (front end and workers,
   psutil) is sampled every SAMPLE_S.
3. after: the capacity run again; after / before is the recovery ratio.

Every answer must be a completed stream or a 429/503 with Retry-After (see the
locustfile): failures counts the rest (5xx, streams without `event: done`, no answer
within the read timeout: a hung connection). After the run GET /health/ready must answer
200. Reported: offered and served rates, outcome counts, p50/p99 of completed requests
under overload (Locust's percentiles), peak RSS against RSS_BOUND_MIB (the README's
bound), and after/before capacity.

Run: `.venv/bin/python benchmarks/bench_overload.py [--overload-s 120] [--measure-s 30]
[--users 256]`; writes benchmarks/results/overload.json. tests/test_overload.py (slow)
runs it and asserts the claims.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.harness import REPO_ROOT, print_table, verdict, write_results
from tests.live_server import live_server

MODEL = "text-lm"
PROMPT_TOKENS = 32
NEW_TOKENS = 32
CAPACITY_USERS = 32  # = the default max_running: the worker's batch is full
HELD = 32 + 64  # the default max_running + max_waiting: requests the server holds at most
OVERLOAD_FACTOR = 4.0
SAMPLE_S = 0.5
RSS_BOUND_MIB = 1024  # the README's bound for the front end and its worker together
RECOVERY_FLOOR = 0.85  # after/before capacity; the run-to-run noise here is ~5-10%
LOCUSTFILE = Path(__file__).with_name("overload_locustfile.py")


def locust(url: str, users: int, run_s: float, pacing_s: float, out: Path) -> dict[str, Any]:
    """One headless Locust run of the overload user; its outcome counts and percentiles
    from the CSV (entries named by outcome, see the locustfile)."""
    env = {
        **os.environ,
        "KVSERVE_MODEL": MODEL,
        "KVSERVE_PROMPT_TOKENS": str(PROMPT_TOKENS),
        "KVSERVE_NEW_TOKENS": str(NEW_TOKENS),
        "KVSERVE_PACING_S": f"{pacing_s:.4f}",
    }
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", url, "--users", str(users), "--spawn-rate", str(users),
        "--run-time", f"{run_s:g}s", "--stop-timeout", "70", "--csv", str(out / "run"),
    ]  # fmt: skip
    log = out / "locust.log"
    with log.open("wb") as sink:
        code = subprocess.call(command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=sink)
    stats = out / "run_stats.csv"
    if not stats.exists():
        raise RuntimeError(f"locust wrote no CSV (exit {code}):\n{log.read_text()[-3000:]}")
    rows = {row["Name"]: row for row in csv.DictReader(stats.open())}
    failures = list(csv.DictReader((out / "run_failures.csv").open()))
    ok = rows.get("generate ok", {})
    count = {name: int(row["Request Count"]) for name, row in rows.items() if name != "Aggregated"}
    return {
        "users": users,
        "run_s": run_s,
        "pacing_s": pacing_s,
        "ok": count.get("generate ok", 0),
        "refused_429": count.get("refused 429", 0),
        "refused_503": count.get("refused 503", 0),
        "failures": int(rows["Aggregated"]["Failure Count"]),
        "failure_reasons": {f["Error"]: int(f["Occurrences"]) for f in failures},
        "requests": int(rows["Aggregated"]["Request Count"]),
        "ok_per_s": count.get("generate ok", 0) / run_s,
        "offered_per_s": int(rows["Aggregated"]["Request Count"]) / run_s,
        "ok_p50_s": float(ok.get("50%") or 0) / 1e3,
        "ok_p99_s": float(ok.get("99%") or 0) / 1e3,
        "ok_max_s": float(ok.get("Max Response Time") or 0) / 1e3,
        "locust_exit": code,
    }


class RssSampler:
    """The summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in [self.process, *self.process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that just ended
                    total += p.memory_info().rss
            self.samples.append(total / 2**20)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health/ready", timeout=10) as response:
            return response.status
    except OSError:
        return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    with live_server([MODEL]) as server, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rss_idle = RssSampler(server.process.pid)
        with rss_idle:
            time.sleep(2 * SAMPLE_S)
        # A short warm-up so the first phase does not pay for first calls.
        locust(server.url, 4, 5, 0, out / "warmup")
        before = locust(server.url, CAPACITY_USERS, args.measure_s, 0, out / "before")
        capacity = before["ok_per_s"]
        if args.users <= 2 * HELD:
            raise SystemExit(f"--users must be over {2 * HELD} (twice what the server holds)")
        pacing = (args.users - HELD) / (OVERLOAD_FACTOR * capacity)
        with RssSampler(server.process.pid) as rss:
            overload = locust(server.url, args.users, args.overload_s, pacing, out / "overload")
        health = ready(server.url)
        after = locust(server.url, CAPACITY_USERS, args.measure_s, 0, out / "after")
        health_after = ready(server.url)
    return {
        "settings": {
            "model": MODEL,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "capacity_users": CAPACITY_USERS,
            "overload_factor": OVERLOAD_FACTOR,
            "server": "kvserve serve --models text-lm (defaults: 1 CPU worker, max_running 32, "
            "max_waiting 64)",
        },
        "before": before,
        "overload": overload,
        "after": after,
        "capacity_per_s": capacity,
        "offered_ratio": overload["offered_per_s"] / capacity,
        "recovery_ratio": after["ok_per_s"] / capacity,
        "rss_idle_mib": max(rss_idle.samples),
        "rss_peak_mib": max(rss.samples),
        "rss_bound_mib": RSS_BOUND_MIB,
        "ready_after_overload": health,
        "ready_at_end": health_after,
    }


def report(result: dict[str, Any]) -> list[str]:
    rows = []
    for phase in ("before", "overload", "after"):
        r = result[phase]
        rows.append([
            phase, r["users"], f"{r['offered_per_s']:.1f}", f"{r['ok_per_s']:.1f}", r["ok"],
            r["refused_429"], r["refused_503"], r["failures"], f"{r['ok_p50_s']:.2f}",
            f"{r['ok_p99_s']:.2f}",
        ])  # fmt: skip
    print_table(
        ["phase", "users", "offered/s", "ok/s", "ok", "429", "503", "failed", "p50 s", "p99 s"],
        rows,
    )
    o = result["overload"]
    print(
        f"capacity {result['capacity_per_s']:.2f} req/s; offered {result['offered_ratio']:.2f}x "
        f"under overload; RSS idle {result['rss_idle_mib']:.0f} MiB, peak "
        f"{result['rss_peak_mib']:.0f} MiB; failure reasons: {o['failure_reasons'] or 'none'}"
    )
    return [
        verdict(
            "under 4x overload every request completed or was refused with Retry-After",
            o["failures"] == 0 and o["refused_429"] + o["refused_503"] > 0,
            f"{o['failures']} failures, {o['refused_429'] + o['refused_503']} refusals, "
            f"{o['ok']} completed",
        ),
        verdict(
            "the offered load was at least 4x the measured capacity (within 10%)",
            result["offered_ratio"] >= 0.9 * OVERLOAD_FACTOR,
            f"{result['offered_ratio']:.2f}x",
        ),
        verdict(
            f"RSS stayed under {RSS_BOUND_MIB} MiB",
            result["rss_peak_mib"] < RSS_BOUND_MIB,
            f"peak {result['rss_peak_mib']:.0f} MiB",
        ),
        verdict(
            "after the overload the server serves at full speed and is ready",
            result["recovery_ratio"] >= RECOVERY_FLOOR and result["ready_at_end"] == 200,
            f"after/before {result['recovery_ratio']:.2f}, ready {result['ready_at_end']}",
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overload-s", type=float, default=120.0, help="overload phase, s")
    parser.add_argument("--measure-s", type=float, default=30.0, help="before/after phases, s")
    parser.add_argument("--users", type=int, default=256, help="users in the overload phase")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    result["verdicts"] = report(result)
    write_results("overload", {"args": vars(args), **result})
    return result


if __name__ == "__main__":
    main()
