"""HTTP claim: streaming through the HTTP API keeps >= 0.9 of the in-process engine's
aggregate tokens/s at 32 concurrent streams; and the time to first token over HTTP.

Demo text-lm (byte-level), greedy, PROMPT_TOKENS-byte prompts (a different one per
stream), `--new-tokens` M new tokens each (default 64) with `stop: []`, so every stream
produces exactly M. Per number of streams N (`--streams`, default 1, 32), interleaved
rounds (harness.measure) of:

- HTTP: a real `kvserve serve --models text-lm` process (its own engine: one worker, the
  default threads and OpenMP policy); N concurrent `POST /v1/generate` with
  `"stream": true`, timed from the first request sent to the last stream's end; TTFT =
  request sent -> first bytes holding `event: token`. Clients (`--clients`), both in this
  process, reading bytes and counting `event: token` in them (no JSON while timed):
  `raw`, HTTP/1.1 by hand on asyncio streams, whose ratio is the verdict (it costs the
  machine little CPU, so the ratio measures the server); `httpx`, one
  `httpx.AsyncClient` (HTTP/1.1, kept-alive connections, `aiter_bytes()`), which on 2
  cores takes CPU from the server's worker and shows what a heavier load generator costs.
- in-process: an `Engine` with the same settings in this process; the same N streams
  consumed with `async for` (engine_harness.run_streams); TTFT = submission -> first
  token event.

The sides take turns, and the idle side's worker sleeps (PASSIVE OpenMP), but the HTTP
client shares the machine with the server's front end and worker (on 2 cores: the
worker takes one, front end + client + anything else running share the other).
tokens/s = N * M / median time of the rounds; ratio = median over rounds of in-process
time / HTTP time (pairs from the same round). TTFT p50/p99 pool every stream of every
timed round (nearest rank: p99 is the maximum below 100 samples). After the timing
every HTTP stream's SSE is parsed: its tokens must equal the in-process tokens of the
same prompt and round (greedy), and its `done` event must report M completion tokens.

Where the time goes (Linux /proc, 10 ms ticks): CPU ms per round of this process (the
client, or the in-process front end), the server's front end, and the worker
(processes under the server, or the in-process worker); worker busy = its CPU / wall.

Run: `.venv/bin/python benchmarks/bench_http.py [--new-tokens M] [--repeats R]
[--streams 1,32] [--clients httpx,raw] [--threads N] [--device cuda] [--quick]`;
writes benchmarks/results/http.json (http_<device>.json for another device).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import torch

from benchmarks.engine_harness import (
    MODEL,
    PROMPT_TOKENS,
    StreamsRun,
    add_device_arg,
    byte_prompts,
    cpu_seconds,
    engine_device,
    percentile,
    result_name,
    run_streams,
    running_engine,
)
from benchmarks.harness import REPO_ROOT, measure, paired_ratio, print_table, verdict, write_results
from benchmarks.loadgen import dechunk
from server.engine.settings import EngineSettings

HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 40.0  # the server drains (no stream left) then stops its worker
TARGET_RATIO = 0.9
CLAIM_STREAMS = 32
CLAIMS = (
    f"HTTP streaming >= {TARGET_RATIO} of the in-process engine's tokens/s at "
    f"{CLAIM_STREAMS} streams",
    f"time to first token over HTTP for a {PROMPT_TOKENS}-token prompt (p50, p99; reported)",
)
TOKEN_MARK = b"event: token"


# ---- the server process ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    """`kvserve` next to this python, or `python -m server.cli` where it is not installed
    (a checkout imported through PYTHONPATH)."""
    script = Path(sys.executable).with_name("kvserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_server(device: str, threads: int | None) -> Iterator[Server]:
    """`kvserve serve --models text-lm` on a free port, ready (GET /health/ready 200);
    SIGTERM at the end (SIGKILL to its process group if it does not exit in time)."""
    port = free_port()
    flags = ["--host", HOST, "--port", str(port), "--models", MODEL, "--devices", device]
    if threads is not None:
        flags += ["--threads-per-worker", str(threads)]
    log = Path(tempfile.mkstemp(prefix="bench_http_server_", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*serve_command(), "serve", *flags],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for the SIGKILL fallback
        )
    server = Server(process, f"http://{HOST}:{port}", log)
    try:
        wait_ready(server)
        yield server
    except BaseException:
        print(f"the server's log: {log}", file=sys.stderr)
        raise
    else:
        log.unlink()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"server did not stop within {STOP_TIMEOUT_S:g} s: SIGKILL", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited ({server.process.returncode}):\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/health/ready", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S:g} s:\n{server.log_tail()}")


# ---- HTTP streams ----------------------------------------------------------------------


def generate_body(prompt: list[int], new_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "input": prompt,
        "max_new_tokens": new_tokens,
        "temperature": 0,
        "stop": [],
        "stream": True,
    }


class HttpxClient:
    """One `httpx.AsyncClient` (HTTP/1.1, kept-alive connections); a stream's body is read
    with `aiter_bytes()` and kept as bytes."""

    name = "httpx"

    def __init__(self, url: str) -> None:
        self.url = url + "/v1/generate"
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            timeout=httpx.Timeout(120.0),
        )

    async def stream(self, prompt: list[int], new_tokens: int) -> tuple[float, bytes]:
        """One streamed generate request: (TTFT s, the SSE body)."""
        start = time.perf_counter()
        ttft = 0.0
        head = b""  # the bytes until the first token event (it may straddle chunks)
        chunks: list[bytes] = []
        async with self.client.stream(
            "POST", self.url, json=generate_body(prompt, new_tokens)
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            async for chunk in response.aiter_bytes():
                if not ttft:
                    head += chunk
                    if TOKEN_MARK in head:
                        ttft = time.perf_counter() - start
                chunks.append(chunk)
        return ttft, b"".join(chunks)

    @staticmethod
    def sse_body(data: bytes) -> bytes:
        return data

    async def aclose(self) -> None:
        await self.client.aclose()


class RawClient:
    """HTTP/1.1 by hand on asyncio streams: one request at a time per kept-alive
    connection, the response read as bytes until the chunked body's last chunk, and
    parsed only after the timing. The calibration of the load generator's share: per
    round of 32 streams it costs a fraction of httpx's CPU (see the CPU table)."""

    name = "raw"
    END = b"\r\n0\r\n\r\n"  # the last chunk; SSE bodies hold no \r, so only it matches

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.free:
            reader, writer = self.free.pop()
            if not (reader.at_eof() or writer.is_closing()):  # not closed by the server
                return reader, writer
        return await asyncio.open_connection(self.host, self.port)

    async def stream(self, prompt: list[int], new_tokens: int) -> tuple[float, bytes]:
        """One streamed generate request: (TTFT s, the whole HTTP response)."""
        body = json.dumps(generate_body(prompt, new_tokens)).encode()
        request = (
            f"POST /v1/generate HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        start = time.perf_counter()
        ttft = 0.0
        reader, writer = await self.connection()
        writer.write(request)
        seen, tail = b"", b""
        chunks: list[bytes] = []
        while tail != self.END:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection mid-response")
            if not ttft:
                seen += data
                if TOKEN_MARK in seen:
                    ttft = time.perf_counter() - start
            chunks.append(data)
            tail = (tail + data)[-len(self.END) :]
        self.free.append((reader, writer))
        return ttft, b"".join(chunks)

    @staticmethod
    def sse_body(data: bytes) -> bytes:
        """The body of a whole chunked HTTP/1.1 response (checks the status line)."""
        head, _, chunked = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {data[:500]!r}")
        return dechunk(chunked)

    async def aclose(self) -> None:
        for _, writer in self.free:
            writer.close()


Client = HttpxClient | RawClient
CLIENTS: dict[str, type[HttpxClient] | type[RawClient]] = {"httpx": HttpxClient, "raw": RawClient}


@dataclass
class HttpRun:
    """N streams over HTTP: from the first request sent to the last stream's end."""

    wall_s: float
    ttft_s: list[float]
    responses: list[bytes]  # per stream, parsed after the timing


async def run_http_streams(client: Client, prompts: list[list[int]], new_tokens: int) -> HttpRun:
    """Every prompt as a concurrent stream; each must hold `new_tokens` token events
    (counted in the bytes: no JSON decoding while timed)."""
    start = time.perf_counter()
    done = await asyncio.gather(*(client.stream(p, new_tokens) for p in prompts))
    wall = time.perf_counter() - start
    for _, data in done:
        if data.count(TOKEN_MARK) != new_tokens or b"event: done" not in data:
            raise RuntimeError(f"expected {new_tokens} token events then done: ...{data[-300:]!r}")
    return HttpRun(wall, [d[0] for d in done], [d[1] for d in done])


def parse_sse(body: bytes) -> tuple[list[int], dict[str, Any]]:
    """A generate stream's tokens and its `done` event's data."""
    tokens: list[int] = []
    done: dict[str, Any] | None = None
    for message in body.decode().split("\n\n"):
        if not message:
            continue
        event, _, payload = message.partition("\n")
        fields = json.loads(payload.removeprefix("data: "))
        if event == "event: token":
            tokens.append(fields["token"])
        elif event == "event: done":
            done = fields
        else:
            raise RuntimeError(f"unexpected SSE message {message!r}")
    assert done is not None, "the stream has no done event"
    return tokens, done


# ---- CPU use ---------------------------------------------------------------------------


def cpu_snapshot(groups: dict[str, Callable[[], list[int]]]) -> dict[str, float]:
    """CPU seconds per group of processes (each group a function giving its pids now)."""
    return {name: sum(cpu_seconds(p) or 0.0 for p in pids()) for name, pids in groups.items()}


# ---- this benchmark --------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of both workers (default: the engine's default for the device)",
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="M tokens per stream")
    parser.add_argument("--streams", default=f"1,{CLAIM_STREAMS}", help="stream counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median used)")
    parser.add_argument(
        "--clients",
        default="httpx,raw",
        help="HTTP clients, comma-separated: httpx (the verdict's), raw (calibration)",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 16 new tokens")
    add_device_arg(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 16
    args.streams = [int(n) for n in args.streams.split(",")]
    args.clients = args.clients.split(",")
    if unknown := set(args.clients) - set(CLIENTS):
        parser.error(f"--clients: unknown {sorted(unknown)}; choose from {sorted(CLIENTS)}")
    args.device = engine_device(args.device)
    return args


@dataclass
class Rounds:
    """What the interleaved rounds gave, warmup rounds dropped."""

    timings: dict[str, dict[str, Any]]  # harness.measure's result
    http: dict[str, list[HttpRun]]  # per run name ("httpx x32")
    engine: dict[int, list[StreamsRun]]  # per number of streams
    cpu: dict[str, list[dict[str, float]]]  # per run name, per round: CPU s per process


def http_name(client: str, n: int) -> str:
    return f"{client} x{n}"


def engine_name(n: int) -> str:
    return f"in-process x{n}"


def run_rounds(
    args: argparse.Namespace, settings: EngineSettings, prompts: list[list[int]]
) -> Rounds:
    """The server and the in-process engine side by side, in interleaved rounds."""
    m, me = args.new_tokens, os.getpid()
    http: dict[str, list[HttpRun]] = {}
    engine: dict[int, list[StreamsRun]] = {}
    cpu: dict[str, list[dict[str, float]]] = {}
    with (
        running_server(args.device, args.threads) as server,
        running_engine(settings) as (eng, run),
    ):
        clients = [CLIENTS[name](server.url) for name in args.clients]
        engine_worker = eng.stats()["workers"][0]["pid"]
        http_processes = {
            "this process": lambda: [me],  # the client (the in-process engine idles)
            "server front end": lambda: [server.process.pid],
            "worker": lambda: descendants(server.process.pid),
        }
        engine_processes = {"this process": lambda: [me], "worker": lambda: [engine_worker]}

        def timed(name: str, processes: Any, work: Callable[[], HttpRun | StreamsRun]) -> Any:
            def fn() -> float:
                before = cpu_snapshot(processes)
                result = work()
                after = cpu_snapshot(processes)
                used = {k: after[k] - before[k] for k in after}
                cpu.setdefault(name, []).append({"wall": result.wall_s, **used})
                return result.wall_s

            return fn

        def http_work(client: Client, n: int) -> HttpRun:
            result = run(run_http_streams(client, prompts[:n], m))
            http.setdefault(http_name(client.name, n), []).append(result)
            return result

        def engine_work(n: int) -> StreamsRun:
            result = run(run_streams(eng, prompts[:n], m))
            if result.tokens != n * m:
                raise RuntimeError(f"in-process x{n}: {result.tokens} tokens, expected {n * m}")
            engine.setdefault(n, []).append(result)
            return result

        fns: dict[str, Any] = {}
        for n in args.streams:
            for c in clients:
                fns[http_name(c.name, n)] = timed(
                    http_name(c.name, n), http_processes, lambda c=c, n=n: http_work(c, n)
                )
            fns[engine_name(n)] = timed(
                engine_name(n), engine_processes, lambda n=n: engine_work(n)
            )
        try:
            timings = measure(fns, repeats=args.repeats, warmup=1)
        finally:
            for c in clients:
                run(c.aclose())
    return Rounds(
        timings,
        {k: v[1:] for k, v in http.items()},
        {k: v[1:] for k, v in engine.items()},
        {k: v[1:] for k, v in cpu.items()},
    )


def ms_pair(values: list[float]) -> str:
    return f"{1e3 * statistics.median(values):.1f} / {1e3 * percentile(values, 0.99):.1f}"


def ttft_summary(ttfts: list[float]) -> dict[str, Any]:
    return {
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "ttft_samples": len(ttfts),
        "ttft_s": ttfts,
    }


def check_tokens(
    runs: list[HttpRun], engine_runs: list[StreamsRun], client: Client | type[Client], m: int
) -> dict[str, int]:
    """Parse every HTTP stream: its tokens against the in-process ones of the same prompt
    and round (greedy), its done event's usage against M."""
    same = usage_ok = checked = 0
    for h_run, e_run in zip(runs, engine_runs, strict=True):
        for response, expected in zip(h_run.responses, e_run.outputs, strict=True):
            tokens, done = parse_sse(client.sse_body(response))
            checked += 1
            same += tokens == expected
            usage_ok += (
                done["usage"]["completion_tokens"] == m and done["finish_reason"] == "length"
            )
    return {"streams_checked": checked, "same_tokens": same, "done_usage_ok": usage_ok}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # this process runs the client and the in-process front end
    m, streams = args.new_tokens, args.streams
    settings = EngineSettings(
        models=[MODEL], devices=[args.device], threads_per_worker=args.threads
    )
    threads = settings.threads(args.device)
    prompts = byte_prompts(max(streams), PROMPT_TOKENS, seed=0)
    load_before = os.getloadavg()
    rounds = run_rounds(args, settings, prompts)
    load_after = os.getloadavg()
    res = rounds.timings

    print(
        f"\n{MODEL} greedy, {PROMPT_TOKENS}-token prompts, {m} new tokens per stream "
        f"(stop []), device {args.device}, {threads} torch thread(s) per worker, "
        f"OMP_WAIT_POLICY={settings.omp_wait_policy}, median of {args.repeats} interleaved "
        f"rounds; ratio: median of per-round ratios HTTP / in-process tokens/s. The HTTP "
        f"clients run in this process and share the machine ({os.cpu_count()} cores) with "
        f"the server and its worker; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after.\n"
    )
    rows, per_n = [], {}
    for n in streams:
        e_name = engine_name(n)
        e_ttft = [t for r in rounds.engine[n] for t in r.ttft_s]
        e_tps = n * m / res[e_name]["median_s"]
        per_n[n] = {"in_process": {"tokens_per_s": e_tps, **ttft_summary(e_ttft)}}
        for client in args.clients:
            name = http_name(client, n)
            h_ttft = [t for r in rounds.http[name] for t in r.ttft_s]
            at = per_n[n][client] = {
                "tokens_per_s": n * m / res[name]["median_s"],
                "ratio_to_in_process": paired_ratio(res, e_name, name),
                **ttft_summary(h_ttft),
                **check_tokens(rounds.http[name], rounds.engine[n], CLIENTS[client], m),
            }
            rows.append(
                [
                    n,
                    client,
                    at["tokens_per_s"],
                    e_tps,
                    f"{at['ratio_to_in_process']:.3f}",
                    ms_pair(h_ttft),
                    ms_pair(e_ttft),
                    f"{at['same_tokens']}/{at['streams_checked']}",
                ]
            )
    print_table(
        [
            "streams",
            "client",
            "HTTP tok/s",
            "in-process tok/s",
            "ratio",
            "HTTP TTFT p50 / p99 ms",
            "in-process TTFT p50 / p99 ms",
            "same tokens",
        ],
        rows,
    )

    cpu_ms = {
        name: {k: 1e3 * statistics.median(r[k] for r in per_round) for k in per_round[0]}
        for name, per_round in rounds.cpu.items()
    }
    print(
        "\nCPU ms per round (median over rounds; /proc, 10 ms ticks). this process: the "
        "HTTP client, or the in-process engine's front end.\n"
    )
    print_table(
        ["run", "wall ms", "this process", "server front end", "worker", "worker busy"],
        [
            [
                name,
                c["wall"],
                c["this process"],
                c.get("server front end", "-"),
                c["worker"],
                f"{c['worker'] / c['wall']:.2f}",
            ]
            for name, c in cpu_ms.items()
        ],
    )
    print()
    lines = []
    # The claim is about the server's overhead: judged with the client that leaves the
    # cores to the server (on 2 cores httpx's own CPU, ~8 ms per request and ~0.16 ms per
    # chunk, competes with the worker; its figure is printed too).
    judged = "raw" if "raw" in args.clients else args.clients[0]
    if CLAIM_STREAMS in per_n:
        at = per_n[CLAIM_STREAMS]
        ratio = at[judged]["ratio_to_in_process"]
        lines.append(
            verdict(
                CLAIMS[0],
                ratio >= TARGET_RATIO,
                f"{judged} client: ratio {ratio:.3f}, HTTP {at[judged]['tokens_per_s']:.0f} "
                f"tok/s, in-process {at['in_process']['tokens_per_s']:.0f} tok/s",
            )
        )
        for client in args.clients:
            if client != judged:
                print(
                    f"  with the {client} client instead: ratio "
                    f"{at[client]['ratio_to_in_process']:.3f} ({at[client]['tokens_per_s']:.0f} "
                    f"tok/s)"
                )
    for n in streams:
        for client in args.clients:
            at = per_n[n][client]
            print(
                f"TTFT over HTTP ({client}) at {n} stream(s): p50 {1e3 * at['ttft_p50_s']:.1f} "
                f"ms, p99 {1e3 * at['ttft_p99_s']:.1f} ms ({at['ttft_samples']} samples); same "
                f"tokens as in-process {at['same_tokens']}/{at['streams_checked']}, done usage "
                f"= {m} completion tokens {at['done_usage_ok']}/{at['streams_checked']}"
            )
    write_results(
        result_name("http", args.device),
        {
            "claims": list(CLAIMS),
            "config": {
                "model": MODEL,
                "device": args.device,
                "worker_threads": threads,
                "omp_wait_policy": settings.omp_wait_policy,
                "prompt_tokens": PROMPT_TOKENS,
                "new_tokens": m,
                "stop": [],
                "streams": streams,
                "repeats": args.repeats,
                "clients": args.clients,
                "verdict_client": judged,
                "statistic": "median of interleaved repeats; ratio: median of per-round "
                "ratios; TTFT percentiles: nearest rank over every stream of the timed rounds",
                "client_note": f"httpx {httpx.__version__} AsyncClient (HTTP/1.1) and a raw "
                "asyncio HTTP/1.1 client, in the benchmark process: they share the machine "
                "with the server and its worker",
                "server_command": " ".join([*serve_command(), "serve", "--models", MODEL]),
                "load_average_before": load_before,
                "load_average_after": load_after,
                "torch_version": torch.__version__,
            },
            "per_streams": {str(n): v for n, v in per_n.items()},
            "cpu_ms_per_round": cpu_ms,
            "cpu_s_each_round": rounds.cpu,
            "timings": res,
            "passed": all(line.startswith("PASS") for line in lines) if lines else None,
            "verdicts": lines,
        },
    )


if __name__ == "__main__":
    main()
