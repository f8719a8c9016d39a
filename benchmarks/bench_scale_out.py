"""Scale-out: two kvserve replicas behind nginx against one replica alone, on the same
machine with the same load; and what a failover turn costs.

1. Throughput. Deployments, all up at once (the idle ones' workers sleep: PASSIVE
   OpenMP), measured in turn (single, pair, then pair, single, ... per round):
   - one: `kvserve serve --models text-lm`, hit directly;
   - two: replica-a and replica-b (`kvserve serve --models text-lm`, sessions in one
     redis-server, each with its own KVSERVE_REPLICA_NAME) behind nginx running
     docker/nginx.conf templated to loopback (tests/nginx_router.py); stateless
     requests are round robin there.
   The same mix, from two load generators:
   - `locust`: `kvserve loadtest --user-classes StreamingGenerateUser` (the locustfile's
     streamed POST /v1/generate) headless with `--csv`, `--users` users started at once,
     `--run-time` s: prompts of PROMPT_TOKENS printable bytes, max_new_tokens NEW_TOKENS,
     `stop: []`, greedy, a pause of WAIT_S between a user's requests. Read from the CSV:
     requests/s ("generate (stream)"), tokens/s ((TTFT + ITL entries) / run time: every
     stream's first token is a TTFT entry, every later one an ITL entry), TTFT p50/p99
     (Locust's rounded percentiles). Streams cut at the end are lost (a bias shared by
     both deployments).
   - `raw` (the judged one): the same mix from closed-loop users in this process, HTTP/1.1
     by hand over asyncio streams (one kept-alive connection per user), counting
     `event: token` in the bytes as they arrive (no SSE or JSON parsing). After a warm-up
     of WARMUP_S, a window of `--run-time` s: tokens/s = tokens arrived in it / its
     length; requests/s = requests ended in it; TTFT over the requests whose first token
     arrived in it. Judged with this one because on 2 cores a load generator's CPU is
     taken from the servers it measures, and Locust (requests + gevent, an SSE parser
     and a JSON decode per token) costs several times more per token; the CPU table shows
     both.
   Ratio two/one: median over rounds of the pair's tokens/s / the single replica's in
   the same round. CPU per process group (Linux /proc, 10 ms ticks) as cores (CPU s /
   wall s) while the load runs: over the raw window; for Locust, sampled every SAMPLE_S
   from when the workers start to work to Locust's end (its start-up left out).

2. Failover turn. text-lm's architecture with max_seq_len 2048 and random weights
   (bench_session_ttft.write_long_model) served by a fresh pair behind nginx with Redis
   sessions per round. Each replica is warmed directly (a session turn and a stateless
   prefill of the same shapes). Then, through nginx:
   - cached: open a session, a HISTORY_TOKENS-token history turn (max_new_tokens 1),
     then the timed follow-up turn (FOLLOW_UP_TOKENS tokens, NEW_TOKENS new tokens,
     streamed), served from the session's cache on its replica;
   - moved (reference): another session with the same history, its follow-up sent
     straight to the other replica, which rebuilds the cache from Redis (no kill);
   - failover: one more session with the same history; SIGKILL to the process group of
     the replica that served it (front end and worker, as when its container dies), and
     once every process of it is gone, the same follow-up turn goes through nginx to the
     other replica (connection refused, next upstream), which reads the history from
     Redis and rebuilds the cache by prefill;
   - stateless (reference): POST /v1/generate of the whole sequence (history, the first
     turn's output, follow-up) on the survivor.
   TTFT: request sent -> first bytes holding `event: token`, as the client sees it. The
   failover turn must be served by the survivor with cached_tokens 0, and its greedy
   tokens must equal the stateless request's (and the cached turn's). Reported: median
   TTFTs and the median of the per-round differences failover - cached (the cost).

Run: `.venv/bin/python benchmarks/bench_scale_out.py [--users 16] [--run-time 30]
[--repeats 2] [--generators raw,locust] [--failover-rounds 5] [--quick]`; writes
benchmarks/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import torch

from benchmarks import bench_session_ttft
from benchmarks.bench_http import TOKEN_MARK, cpu_snapshot, descendants, parse_sse, serve_command
from benchmarks.bench_session_ttft import FOLLOW_UP_TOKENS, HISTORY_TOKENS, write_long_model
from benchmarks.engine_harness import byte_prompts, cpu_seconds, percentile
from benchmarks.harness import REPO_ROOT, print_table, write_results
from server.engine.settings import default_threads
from tests.live_server import LiveServer, live_server
from tests.nginx_router import nginx_router
from tests.redis_server import redis_server
from tests.test_scale_out import Cluster

MODEL = "text-lm"
PROMPT_TOKENS = (16, 256)  # uniform, inclusive: the locustfile's default
NEW_TOKENS = (16, 128)
WAIT_S = (0.0, 0.5)  # between a user's requests: the locustfile's default
PROMPT_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"  # locustfile's
WARMUP_S = 3.0
REPLICAS = ("replica-a", "replica-b")
DEPLOYMENTS = ("one", "two")
CHUNKED_END = b"\r\n0\r\n\r\n"  # the last chunk; SSE bodies hold no \r
DONE_MARK = b"event: done"
TIMEOUT = httpx.Timeout(120.0)
SAMPLE_S = 0.25  # CPU sampling period while Locust runs
LONG_MODEL = bench_session_ttft.MODEL  # text-lm's architecture, max_seq_len 2048
FOLLOW_UP_NEW_TOKENS = bench_session_ttft.NEW_TOKENS


Groups = dict[str, Callable[[], list[int]]]  # processes by role: a function giving their pids


# ---- the deployments -------------------------------------------------------------------


@contextlib.contextmanager
def replica_pair(model: str, model_dir: str | None = None) -> Iterator[Cluster]:
    """redis-server, replica-a and replica-b (sessions in it, each its own X-Replica name)
    and nginx running docker/nginx.conf in front of them."""
    args = ["--model-dir", model_dir] if model_dir else []
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(redis_server())
        replicas = {}
        for name in REPLICAS:
            env = {"KVSERVE_SESSION_STORE": store, "KVSERVE_REPLICA_NAME": name}
            replicas[name] = stack.enter_context(live_server([model], env=env, args=args))
        addresses = [r.url.removeprefix("http://") for r in replicas.values()]
        yield Cluster(stack.enter_context(nginx_router(addresses)), replicas)


def children_named(prefix: str) -> list[int]:
    """This process's descendants whose command name starts with `prefix`."""
    found = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().startswith(prefix):
                found.append(pid)
    return found


def process_groups(single: LiveServer, pair: Cluster) -> Groups:
    """Every server process, by what it is (functions giving the pids now)."""
    servers = {"one": single, **pair.replicas}
    groups: dict[str, Callable[[], list[int]]] = {}
    for name, server in servers.items():
        groups[f"{name} front end"] = lambda s=server: [s.process.pid]
        groups[f"{name} worker"] = lambda s=server: descendants(s.process.pid)
    groups["nginx"] = lambda: children_named("nginx")
    groups["redis"] = lambda: children_named("redis-server")
    return groups


# ---- the raw load generator ------------------------------------------------------------


@dataclass
class Window:
    start: float
    end: float
    tokens: int = 0  # token events that arrived within it

    def holds(self, t: float | None) -> bool:
        return t is not None and self.start <= t < self.end


@dataclass
class RawRequest:
    sent: float
    new_tokens: int
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    done: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.done and self.tokens == self.new_tokens


def generate_body(rng: random.Random) -> tuple[bytes, int]:
    """One request of the mix (the locustfile's StreamingGenerateUser): (JSON, its tokens)."""
    prompt = "".join(rng.choices(PROMPT_CHARS, k=rng.randint(*PROMPT_TOKENS)))
    new = rng.randint(*NEW_TOKENS)
    body = {"model": MODEL, "prompt": prompt, "max_new_tokens": new, "stop": [], "stream": True}
    return json.dumps(body).encode(), new


async def raw_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
    record: RawRequest, window: Window,
) -> None:  # fmt: skip
    """Send one request and read its chunked SSE answer to the end, counting token events
    as they arrive (a mark split between two reads is found in the previous tail)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    tail = b""
    while True:
        data = await reader.read(65536)
        now = time.perf_counter()
        if not data:
            raise ConnectionError("the server closed the connection mid-response")
        joined = tail + data
        if count := joined.count(TOKEN_MARK):
            record.first = record.first or now
            record.tokens += count
            window.tokens += count if window.holds(now) else 0
        record.done = record.done or DONE_MARK in joined
        if joined.endswith(CHUNKED_END):
            record.end = now
            return
        tail = joined[-(len(TOKEN_MARK) - 1) :]  # too short to hold a whole mark again


async def raw_load(
    url: str, users: int, run_s: float, seed: int, groups: Groups | None = None
) -> dict[str, Any]:
    """`users` closed-loop users sending the mix to `url`: a warm-up, the measured window,
    then every request still running is cancelled. CPU cores of `groups` and of this
    process (the load generator) over the window."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    start = time.perf_counter()
    window = Window(start + WARMUP_S, start + WARMUP_S + run_s)
    records: list[RawRequest] = []

    async def user(index: int) -> None:
        rng = random.Random(f"{seed}:{index}")
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while time.perf_counter() < window.end:
                body, new = generate_body(rng)
                request = (
                    f"POST /v1/generate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                record = RawRequest(time.perf_counter(), new)
                records.append(record)
                try:
                    if reader is None or writer is None or reader.at_eof():
                        reader, writer = await asyncio.open_connection(host, int(port))
                    await raw_stream(reader, writer, request, record, window)
                except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                    record.error = f"{type(exc).__name__}: {exc}"
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                await asyncio.sleep(rng.uniform(*WAIT_S))
        finally:
            if writer is not None:
                writer.close()

    def snapshot() -> dict[str, float]:
        return {"load generator": cpu_seconds(os.getpid()) or 0.0, **cpu_snapshot(groups or {})}

    tasks = [asyncio.create_task(user(i)) for i in range(users)]
    await asyncio.sleep(window.start - time.perf_counter())
    before = snapshot()
    await asyncio.sleep(window.end - time.perf_counter())
    after = snapshot()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ended = [r for r in records if window.holds(r.end)]
    ttft = [r.first - r.sent for r in records if window.holds(r.first)]
    return {
        "tokens_per_s": window.tokens / run_s,
        "requests_per_s": len(ended) / run_s,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": percentile(ttft, 0.99),
        "ttft_s": ttft,
        "requests": len(ended),
        # a request cancelled at the window's end is no failure
        "failures": sum(r.error is not None or (r.end is not None and not r.ok) for r in records),
        "cpu_cores": {k: (after[k] - before[k]) / run_s for k in after},
    }


# ---- Locust ----------------------------------------------------------------------------


def locust_command(url: str, users: int, run_s: float, out: Path) -> list[str]:
    return [
        *serve_command(), "loadtest", "--host", url, "--users", str(users),
        "--run-time", f"{run_s:g}s", "--user-classes", "StreamingGenerateUser",
        "--prompt-tokens", "{}:{}".format(*PROMPT_TOKENS),
        "--new-tokens", "{}:{}".format(*NEW_TOKENS), "--wait", "{:g}:{:g}".format(*WAIT_S),
        "--out", str(out),
    ]  # fmt: skip


def locust_load(url: str, users: int, run_s: float, groups: Groups) -> dict[str, Any]:
    """`kvserve loadtest` headless with --csv; its figures from kvserve_stats.csv. CPU is
    sampled while it runs (see `load_interval_cores`)."""
    samples: list[tuple[float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="kvserve-locust-") as tmp:
        out = Path(tmp)
        log = out / "loadtest.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                locust_command(url, users, run_s, out), cwd=REPO_ROOT, stdout=sink, stderr=sink
            )
        seen: dict[int, float] = {}  # CPU s of kvserve loadtest and Locust, last seen
        while process.poll() is None:
            locust = descendants(process.pid)
            for pid in [process.pid, *locust]:
                seen[pid] = cpu_seconds(pid) or seen.get(pid, 0.0)
            if locust:  # the run is measured while Locust lives
                snapshot = {"load generator": sum(seen.values()), **cpu_snapshot(groups)}
                samples.append((time.perf_counter(), snapshot))
            time.sleep(SAMPLE_S)
        stats = out / "kvserve_stats.csv"
        if not stats.exists():
            raise RuntimeError(
                f"locust wrote no CSV (exit {process.returncode}):\n{log.read_text()}"
            )
        rows = {row["Name"]: row for row in csv.DictReader(stats.open())}
    generate, ttft = rows["generate (stream)"], rows["generate TTFT"]
    itl = rows.get("generate ITL", {"Request Count": "0"})
    tokens = int(ttft["Request Count"]) + int(itl["Request Count"])
    return {
        "tokens_per_s": tokens / run_s,
        "requests_per_s": int(generate["Request Count"]) / run_s,
        "ttft_p50_s": float(ttft["50%"]) / 1e3,
        "ttft_p99_s": float(ttft["99%"]) / 1e3,
        "requests": int(generate["Request Count"]),
        "failures": int(generate["Failure Count"]),
        "locust_exit": process.returncode,
        "cpu_cores": load_interval_cores(samples),
    }


def load_interval_cores(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Cores per group while the load ran: from the first sample where the workers had
    started (they idle while `kvserve loadtest` and Locust import) to the last one taken
    while Locust lived, so neither program's start-up counts."""
    workers = [sum(v for k, v in snap.items() if k.endswith(" worker")) for _, snap in samples]
    # 3 ticks of 10 ms: more than idle workers (PASSIVE OpenMP) use in a whole run
    start = next(i for i, w in enumerate(workers) if w - workers[0] > 0.03)
    (t0, first), (t1, last) = samples[max(0, start - 1)], samples[-1]
    return {k: (last[k] - first[k]) / (t1 - t0) for k in last}


# ---- the throughput runs ---------------------------------------------------------------


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Every (generator, deployment) run, `args.repeats` rounds, the deployments' order
    alternating between rounds."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        g: {d: [] for d in DEPLOYMENTS} for g in args.generators
    }
    with live_server([MODEL]) as single, replica_pair(MODEL) as pair:
        urls = {"one": single.url, "two": pair.url}
        groups = process_groups(single, pair)
        for url in [single.url, *(r.url for r in pair.replicas.values())]:
            asyncio.run(raw_load(url, 2, 1.0, seed=-1))  # warm every worker
        for r in range(args.repeats):
            for generator in args.generators:
                for deployment in DEPLOYMENTS if r % 2 == 0 else DEPLOYMENTS[::-1]:
                    url = urls[deployment]
                    if generator == "raw":
                        load = raw_load(url, args.users, args.run_time, r, groups)
                        result = asyncio.run(load)
                    else:
                        result = locust_load(url, args.users, args.run_time, groups)
                    runs[generator][deployment].append(result)
                    print(
                        f"  round {r} {generator} {deployment}: {result['tokens_per_s']:.0f} "
                        f"tok/s, {result['requests_per_s']:.2f} req/s, "
                        f"{result['failures']} failures",
                        flush=True,
                    )
    return runs


def cores_by_role(cores: dict[str, float], deployment: str) -> dict[str, float]:
    """Cores per role: the measured deployment's processes (its workers one by one, as
    `worker <name>`), the other replicas summed as idle, and the total."""
    servers = ["one"] if deployment == "one" else list(REPLICAS)
    idle = [s for s in ["one", *REPLICAS] if s not in servers]
    out = {
        "load generator": cores["load generator"],
        "front end(s)": sum(cores[f"{s} front end"] for s in servers),
        **{f"worker {s}": cores[f"{s} worker"] for s in servers},
        "nginx": cores["nginx"],
        "redis": cores["redis"],
        "idle replicas": sum(cores[f"{s} {p}"] for s in idle for p in ("front end", "worker")),
    }
    out["total"] = sum(out.values())
    return out


def summarize_throughput(runs: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for generator, per in runs.items():
        at: dict[str, Any] = {}
        for d in DEPLOYMENTS:
            rs = per[d]
            at[d] = {
                key: statistics.median(r[key] for r in rs)
                for key in ("tokens_per_s", "requests_per_s", "ttft_p50_s", "ttft_p99_s")
            }
            at[d]["failures"] = sum(r["failures"] for r in rs)
            roles = [cores_by_role(r["cpu_cores"], d) for r in rs]
            at[d]["cpu_cores"] = {k: statistics.median(c[k] for c in roles) for k in roles[0]}
        pairs = zip(per["two"], per["one"], strict=True)
        at["ratio_two_to_one"] = statistics.median(
            t["tokens_per_s"] / o["tokens_per_s"] for t, o in pairs
        )
        summary[generator] = at
    return summary


def print_throughput(summary: dict[str, Any]) -> None:
    rows = []
    for generator, at in summary.items():
        for d in DEPLOYMENTS:
            s = at[d]
            rows.append([
                generator, d, s["tokens_per_s"], s["requests_per_s"],
                f"{1e3 * s['ttft_p50_s']:.0f} / {1e3 * s['ttft_p99_s']:.0f}", s["failures"],
                f"{at['ratio_two_to_one']:.2f}" if d == "two" else "",
            ])  # fmt: skip
    print_table(
        ["load generator", "replicas", "tokens/s", "requests/s", "TTFT p50 / p99 ms",
         "failures", "tokens/s two / one"],
        rows,
    )  # fmt: skip
    print("\nCPU cores per process group (CPU s / wall s over each run, median of rounds)\n")
    rows = []
    for generator, at in summary.items():
        for d in DEPLOYMENTS:
            c = at[d]["cpu_cores"]
            rows.append([
                generator, d, f"{c['load generator']:.2f}", f"{c['front end(s)']:.2f}",
                " + ".join(f"{v:.2f}" for k, v in c.items() if k.startswith("worker ")),
                f"{c['nginx']:.2f}",
                f"{c['redis']:.2f}", f"{c['idle replicas']:.2f}", f"{c['total']:.2f}",
            ])  # fmt: skip
    print_table(
        ["load generator", "replicas", "load generator", "front end(s)", "worker(s)",
         "nginx", "redis", "idle replicas", "total"],
        rows,
    )  # fmt: skip


def print_verdict(summary: dict[str, Any]) -> None:
    """The ratio two / one with the judged load generator, and where the CPU went."""
    judged = "raw" if "raw" in summary else next(iter(summary))
    at = summary[judged]
    cores = {d: at[d]["cpu_cores"] for d in DEPLOYMENTS}
    workers = {d: sum(v for k, v in cores[d].items() if k.startswith("worker ")) for d in cores}
    print(
        f"\ntokens/s two / one ({judged} load generator, judged): "
        f"{at['ratio_two_to_one']:.2f}; worker cores: one {workers['one']:.2f}, two "
        f"{workers['two']:.2f}; every measured process: one {cores['one']['total']:.2f}, "
        f"two {cores['two']['total']:.2f} of {os.cpu_count()} cores"
    )
    for generator, other in summary.items():
        if generator != judged:
            print(f"  with {generator} instead: {other['ratio_two_to_one']:.2f}")


# ---- the failover turn -----------------------------------------------------------------


@dataclass
class Turn:
    ttft_s: float
    outputs: list[int]
    usage: dict[str, int] = field(default_factory=dict)
    replica: str = ""


def streamed(http: httpx.Client, url: str, body: dict[str, Any]) -> Turn:
    """POST `body` streamed (greedy, no stop token): TTFT, then the parsed SSE."""
    start = time.perf_counter()
    ttft, head, chunks = 0.0, b"", []
    body = {**body, "temperature": 0, "stop": [], "stream": True}
    with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text}")
        for chunk in response.iter_bytes():
            if not ttft:
                head += chunk
                if TOKEN_MARK in head:
                    ttft = time.perf_counter() - start
            chunks.append(chunk)
    tokens, done = parse_sse(b"".join(chunks))
    return Turn(ttft, tokens, done["usage"], response.headers["x-replica"])


def primed_session(http: httpx.Client, url: str, history: list[int]) -> tuple[str, Turn]:
    """A new session at `url` whose first turn sent `history` (max_new_tokens 1)."""
    opened = http.post(f"{url}/v1/sessions", json={"model": LONG_MODEL})
    opened.raise_for_status()
    session = opened.json()["session_id"]
    body = {"input": history, "max_new_tokens": 1, "temperature": 0, "stop": []}
    first = http.post(f"{url}/v1/sessions/{session}/generate", json=body)
    first.raise_for_status()
    return session, Turn(0.0, first.json()["outputs"], {}, first.headers["x-replica"])


def follow_up_turn(http: httpx.Client, url: str, session: str, follow_up: list[int]) -> Turn:
    body = {"input": follow_up, "max_new_tokens": FOLLOW_UP_NEW_TOKENS}
    return streamed(http, f"{url}/v1/sessions/{session}/generate", body)


def stateless_turn(http: httpx.Client, url: str, whole: list[int]) -> Turn:
    body = {"model": LONG_MODEL, "input": whole, "max_new_tokens": FOLLOW_UP_NEW_TOKENS}
    return streamed(http, f"{url}/v1/generate", body)


def wait_gone(process: subprocess.Popen[bytes]) -> None:
    """Reap a killed replica and wait until no process of its group is left (its memory
    freed: the kernel's work of tearing it down is not timed in the next turn)."""
    process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise RuntimeError(f"the process group {process.pid} outlived SIGKILL by 10 s")


def failover_round(model_dir: str, history: list[int], follow_up: list[int]) -> dict[str, Any]:
    """A fresh pair: warm both replicas, then the cached turn, the failover turn and the
    stateless reference (module docstring)."""
    with replica_pair(LONG_MODEL, model_dir) as pair, httpx.Client(timeout=TIMEOUT) as http:
        warm_history = byte_prompts(1, HISTORY_TOKENS, seed=98)[0]
        warm_follow_up = byte_prompts(1, FOLLOW_UP_TOKENS, seed=99)[0]
        for replica in pair.replicas.values():
            session, first = primed_session(http, replica.url, warm_history)
            follow_up_turn(http, replica.url, session, warm_follow_up)
            stateless_turn(http, replica.url, warm_history + first.outputs + warm_follow_up)

        session, first = primed_session(http, pair.url, history)
        cached = follow_up_turn(http, pair.url, session, follow_up)
        assert cached.replica == first.replica, (cached.replica, first.replica)
        assert cached.usage["cached_tokens"] >= HISTORY_TOKENS, cached.usage

        session, moved_from = primed_session(http, pair.url, history)
        other = next(r for name, r in pair.replicas.items() if name != moved_from.replica)
        moved = follow_up_turn(http, other.url, session, follow_up)
        assert moved.usage["cached_tokens"] == 0, moved.usage

        session, again = primed_session(http, pair.url, history)
        assert again.outputs == first.outputs
        victim = pair.replicas[again.replica]
        os.killpg(victim.process.pid, signal.SIGKILL)  # front end and worker at once
        wait_gone(victim.process)
        failover = follow_up_turn(http, pair.url, session, follow_up)
        assert failover.replica != again.replica, "the turn went to the killed replica"
        assert failover.usage["cached_tokens"] == 0, failover.usage

        whole = history + first.outputs + follow_up
        stateless = stateless_turn(http, pair.replicas[failover.replica].url, whole)
    return {
        "cached": cached,
        "moved": moved,
        "failover": failover,
        "stateless": stateless,
        "killed": again.replica,
        "same_as_stateless": failover.outputs == stateless.outputs,
        "same_as_cached": failover.outputs == cached.outputs,
    }


TURNS = ("cached", "moved", "failover", "stateless")


def failover(args: argparse.Namespace) -> dict[str, Any]:
    histories = byte_prompts(args.failover_rounds, HISTORY_TOKENS, seed=10)
    follow_ups = byte_prompts(args.failover_rounds, FOLLOW_UP_TOKENS, seed=11)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="kvserve-bench-") as tmp:
        config = write_long_model(Path(tmp))
        for r in range(args.failover_rounds):
            rounds.append(failover_round(tmp, histories[r], follow_ups[r]))
            times = ", ".join(f"{k} {1e3 * rounds[-1][k].ttft_s:.1f} ms" for k in TURNS)
            print(f"  round {r}: {times} (killed {rounds[-1]['killed']})", flush=True)
    ttft = {k: [r[k].ttft_s for r in rounds] for k in TURNS}
    return {
        "model_config": config,
        "ttft_s": ttft,
        "ttft_median_s": {k: statistics.median(v) for k, v in ttft.items()},
        "failover_cost_s": statistics.median(
            f - c for f, c in zip(ttft["failover"], ttft["cached"], strict=True)
        ),
        "failover_minus_stateless_s": statistics.median(
            f - s for f, s in zip(ttft["failover"], ttft["stateless"], strict=True)
        ),
        "cached_tokens": {k: [r[k].usage["cached_tokens"] for r in rounds] for k in TURNS},
        "prompt_tokens": {k: rounds[0][k].usage["prompt_tokens"] for k in TURNS},
        "served_by": {k: [r[k].replica for r in rounds] for k in TURNS},
        "killed": [r["killed"] for r in rounds],
        "same_as_stateless": sum(r["same_as_stateless"] for r in rounds),
        "same_as_cached": sum(r["same_as_cached"] for r in rounds),
        "rounds": len(rounds),
    }


def print_failover(result: dict[str, Any]) -> None:
    labels = {
        "cached": "follow-up, cached on its replica",
        "moved": "follow-up sent to the other replica (no kill): rebuilt",
        "failover": "follow-up after kill -9: rebuilt from Redis",
        "stateless": "reference: stateless, whole sequence",
    }
    rows = []
    for k in TURNS:
        ttft = result["ttft_s"][k]
        cached = result["cached_tokens"][k]
        rows.append([
            labels[k], result["prompt_tokens"][k], f"{min(cached)}-{max(cached)}",
            1e3 * statistics.median(ttft), 1e3 * min(ttft), 1e3 * max(ttft),
        ])  # fmt: skip
    print_table(
        ["turn", "prompt tokens", "tokens from cache", "TTFT p50 ms", "min ms", "max ms"], rows
    )
    n = result["rounds"]
    print()
    print_table(
        ["measure", "value"],
        [
            ["failover cost (median of failover - cached)",
             f"{1e3 * result['failover_cost_s']:.1f} ms"],
            ["failover - stateless (median)",
             f"{1e3 * result['failover_minus_stateless_s']:.1f} ms"],
            ["failover tokens = stateless tokens", f"{result['same_as_stateless']}/{n} rounds"],
            ["failover tokens = cached turn's tokens", f"{result['same_as_cached']}/{n} rounds"],
        ],
    )  # fmt: skip


# ---- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=None, help="concurrent users (16)")
    parser.add_argument(
        "--run-time",
        type=lambda text: float(text.removesuffix("s")),
        default=None,
        help="seconds per load run, e.g. 30 or 30s (30)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds per load run (2)")
    parser.add_argument(
        "--generators", default="raw,locust", help="load generators: raw (judged), locust"
    )
    parser.add_argument(
        "--failover-rounds", type=int, default=None, help="fresh pairs, one kill each (5)"
    )
    parser.add_argument(
        "--skip", choices=("throughput", "failover"), default=None, help="leave a part out"
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 users, 10 s, 1 round, 2 failover rounds"
    )
    args = parser.parse_args()
    defaults = (8, 10.0, 1, 2) if args.quick else (16, 30.0, 2, 5)
    names = ("users", "run_time", "repeats", "failover_rounds")
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.generators = args.generators.split(",")
    if unknown := set(args.generators) - {"raw", "locust"}:
        parser.error(f"--generators: unknown {sorted(unknown)}; choose from raw, locust")
    return args


def main() -> None:
    started = time.perf_counter()
    args = parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    payload: dict[str, Any] = {}
    if args.skip != "throughput":
        print(
            f"throughput: {args.users} users, {args.run_time:g} s per run, "
            f"{args.repeats} round(s), generators {', '.join(args.generators)}",
            flush=True,
        )
        runs = throughput(args)
        summary = summarize_throughput(runs)
        print(
            f"\n{MODEL}, streamed POST /v1/generate, prompts {PROMPT_TOKENS[0]}-"
            f"{PROMPT_TOKENS[1]} bytes, max_new_tokens {NEW_TOKENS[0]}-{NEW_TOKENS[1]}, "
            f"greedy, stop [], pause {WAIT_S[0]:g}-{WAIT_S[1]:g} s; {args.users} users, "
            f"{args.run_time:g} s, median of {args.repeats} round(s); {os.cpu_count()} "
            f"cores, {default_threads('cpu', 1)} torch thread(s) per worker. one: a replica "
            "hit directly; two: two replicas behind nginx (round robin).\n"
        )
        print_throughput(summary)
        print_verdict(summary)
        payload["throughput"] = {"summary": summary, "runs": runs}
    if args.skip != "failover":
        print(f"\nfailover: {args.failover_rounds} round(s), a fresh pair each", flush=True)
        result = failover(args)
        print(
            f"\n{LONG_MODEL}: text-lm's architecture, max_seq_len 2048, random weights; "
            f"{HISTORY_TOKENS}-token history, {FOLLOW_UP_TOKENS}-token follow-up, "
            f"{FOLLOW_UP_NEW_TOKENS} new tokens; two replicas behind nginx, sessions in "
            f"Redis; {result['rounds']} rounds, medians\n"
        )
        print_failover(result)
        payload["failover"] = result
    total = time.perf_counter() - started
    load_after = os.getloadavg()
    print(f"\ntotal run time {total:.0f} s; load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")  # fmt: skip
    write_results(
        "scale_out",
        {
            "config": {
                "model": MODEL,
                "users": args.users,
                "run_time_s": args.run_time,
                "repeats": args.repeats,
                "generators": args.generators,
                "judged_generator": "raw",
                "prompt_tokens": PROMPT_TOKENS,
                "new_tokens": NEW_TOKENS,
                "wait_s": WAIT_S,
                "warmup_s_raw": WARMUP_S,
                "locust_command": " ".join(
                    locust_command("URL", args.users, args.run_time, Path("OUT"))
                ),
                "failover_model": LONG_MODEL,
                "history_tokens": HISTORY_TOKENS,
                "follow_up_tokens": FOLLOW_UP_TOKENS,
                "follow_up_new_tokens": FOLLOW_UP_NEW_TOKENS,
                "failover_rounds": args.failover_rounds,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "total_run_time_s": total,
            },
            **payload,
        },
    )


if __name__ == "__main__":
    main()
