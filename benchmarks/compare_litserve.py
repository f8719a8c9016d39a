"""kvserve against LitServe on the same cores, the same model and the same load mix.

Goals (issue): at 32 users streaming, kvserve's tokens/s >= 1.5x the best LitServe
configuration's and >= 5x LitServe's default, with p99 time to first token <= half the
best LitServe configuration's; predict requests/s at least equal.

Servers, each started fresh per configuration and stopped after its points (one at a
time, on this machine's cores; torch 1 intra-op thread in every model worker):

- kvserve: `kvserve serve --models text-lm` (or `sine-regressor` for predict), its
  defaults: one CPU worker, continuous batching (32 running sequences), dynamic predict
  batching; POST /v1/generate with `"stream": true, "temperature": 0, "stop": []`, or
  POST /v1/predict.
- LitServe (benchmarks/litserve_app.py: the same checkpoints, model_core's cached
  decode, greedy, one JSON line per token), one worker, in its two sensible
  configurations: `default` (one request at a time) and `batched` (max_batch_size 32,
  batch_timeout `--batch-timeout`, batch/unbatch written for token streams).
  kvserve is judged against the better LitServe configuration at each point, per metric
  (the higher tokens/s or requests/s, the lower p99 TTFT).

Load (benchmarks/loadgen.py): closed-loop users (1, 8, 32, 64), each sending its next
request when the previous one ended; the same seeded mix for every server: prompts of
printable ASCII, length uniform 16-256 bytes, max_new_tokens uniform 16-128 (greedy, no
stop token, so each request streams exactly that many tokens); predict: one noisy sine of
16-256 steps per request. Each point: a warm-up, a measured window of `--duration`
seconds, then a drain (running requests finish, so their TTFT counts). The load
generator is a raw asyncio HTTP/1.1 client in this process (not Locust: see loadgen.py),
measuring what Locust's CSV would (requests/s, failures, latency percentiles) plus
TTFT and tokens/s.

Checks before each server's load: a few concurrent requests whose tokens (or predict
outputs) must equal model_core's in-process greedy decode (or forward pass).

Where the time goes: CPU seconds over each window (Linux /proc) of the server's front end
(every process but the model worker: uvicorn, for LitServe also its queue manager and
launcher), its model worker(s), and this process (the load generator). The "ceiling"
plot sets kvserve's HTTP tokens/s beside the in-process engine and the bare batched
model_core loop from benchmarks/results/engine_throughput.json (bench_engine_throughput.py:
16-byte prompts, 64 new tokens, 1/8/32 streams: a fixed workload, not this mix).

Run: `.venv/bin/python benchmarks/compare_litserve.py [--quick] [--users 1,8,32,64]
[--duration 15] [--warmup 3] [--apis generate,predict] [--batch-timeout 0.01]
[--litserve-fast-queue] [--skip-engine] [--name compare_litserve]`; writes
benchmarks/results/<name>.json and <name>_{tokens,ttft,predict,ceiling}.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import torch

from benchmarks.bench_http import descendants, free_port, serve_command
from benchmarks.engine_harness import cpu_seconds, percentile, running_engine
from benchmarks.harness import REPO_ROOT, RESULTS_DIR, print_table, verdict, write_results
from benchmarks.loadgen import (
    GenerateMix,
    LoadResult,
    PredictMix,
    RequestRecord,
    Target,
    Window,
    Work,
    dechunk,
    run_load,
)
from model_core.checkpoint import load
from model_core.recipes import bundled_dir
from server.engine.engine import Engine
from server.engine.settings import EngineSettings

HOST = "127.0.0.1"
TEXT_MODEL, REGRESSION_MODEL = "text-lm", "sine-regressor"
CLAIM_USERS = 32
TOKENS_VS_BEST, TOKENS_VS_DEFAULT, TTFT_P99_VS_BEST = 1.5, 5.0, 0.5
READY_TIMEOUT_S, STOP_TIMEOUT_S = 180.0, 40.0
LITSERVE_BATCH = 32
LITSERVE_CONFIGS = ("litserve-default", "litserve-batched")
CONFIGS = ("kvserve", *LITSERVE_CONFIGS)
ENGINE = "kvserve engine in-process"  # the ceiling: the same mix without HTTP
PROBES = 4  # concurrent requests checked against model_core before each server's load


# ---- servers ---------------------------------------------------------------------------


@dataclass
class Server:
    config: str
    api: str  # generate | predict
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def target(self) -> Target:
        if self.config == "kvserve":
            if self.api == "generate":
                return Target(
                    self.config, HOST, self.port, "/v1/generate", kvserve_generate, b"event: token"
                )
            return Target(self.config, HOST, self.port, "/v1/predict", kvserve_predict, None)
        mark = b'{"index": ' if self.api == "generate" else None
        return Target(self.config, HOST, self.port, "/predict", dict, mark)

    def pids(self) -> dict[str, list[int]]:
        """This server's processes now: the model worker(s) (spawned: `spawn_main` in the
        command line) and the rest (the front end)."""
        groups: dict[str, list[int]] = {"front end": [self.process.pid], "worker": []}
        for pid in descendants(self.process.pid):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                groups["worker" if b"spawn_main" in cmdline else "front end"].append(pid)
        return groups


def kvserve_generate(fields: dict[str, Any]) -> dict[str, Any]:
    return {"model": TEXT_MODEL, **fields, "temperature": 0, "stop": [], "stream": True}


def kvserve_predict(fields: dict[str, Any]) -> dict[str, Any]:
    return {"model": REGRESSION_MODEL, **fields}


def server_command(config: str, api: str, port: int, args: argparse.Namespace) -> list[str]:
    if config == "kvserve":
        model = TEXT_MODEL if api == "generate" else REGRESSION_MODEL
        flags = ["--host", HOST, "--port", str(port), "--models", model, "--devices", "cpu"]
        return [*serve_command(), "serve", *flags]
    app = [sys.executable, str(REPO_ROOT / "benchmarks" / "litserve_app.py")]
    flags = ["--api", api, "--host", HOST, "--port", str(port)]
    if config == "litserve-batched":
        flags += [
            "--max-batch-size",
            str(LITSERVE_BATCH),
            "--batch-timeout",
            str(args.batch_timeout),
        ]
    if args.litserve_fast_queue:
        flags.append("--fast-queue")
    return [*app, *flags]


@contextlib.contextmanager
def running_server(config: str, api: str, args: argparse.Namespace) -> Iterator[Server]:
    """The server on a free port, ready; stopped (SIGINT for LitServe, SIGTERM for kvserve,
    then SIGKILL to its process group) at the end."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix=f"compare_{config}_{api}_", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            server_command(config, api, port, args),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for the SIGKILL fallback
        )
    server = Server(config, api, process, port, log)
    ready = "/health/ready" if config == "kvserve" else "/health"
    try:
        wait_ready(server, f"http://{HOST}:{port}{ready}")
        yield server
    except BaseException:
        print(f"the server's log: {log}", file=sys.stderr)
        raise
    else:
        log.unlink()
    finally:
        process.send_signal(signal.SIGTERM if config == "kvserve" else signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{config} did not stop within {STOP_TIMEOUT_S:g} s: SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what is left of the group
        process.wait()


def wait_ready(server: Server, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.config} exited ({server.process.returncode}):\n{tail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.config} was not ready in {READY_TIMEOUT_S:g} s")


# ---- checks against model_core ---------------------------------------------------------


def streamed_tokens(config: str, body: bytes) -> list[int]:
    payload = dechunk(body).decode()
    if config == "kvserve":  # SSE: event: token / data: {...}
        messages = [m.partition("\n") for m in payload.split("\n\n") if m]
        return [
            json.loads(d.removeprefix("data: "))["token"]
            for e, _, d in messages
            if e == "event: token"
        ]
    return [json.loads(line)["token"] for line in payload.splitlines() if line]


@torch.inference_mode()
def reference_tokens(model: torch.nn.Module, work: Work) -> list[int]:
    """model_core's greedy cached decode of one request, in this process."""
    ids = list(work.fields["prompt"].encode())
    new = work.fields["max_new_tokens"]
    cache = model.new_cache(1, capacity=len(ids) + new)
    nxt = model.step(torch.tensor([ids]), cache)[:, -1].argmax(dim=-1)
    out = [int(nxt)]
    for _ in range(new - 1):
        nxt = model.step(nxt[:, None], cache)[:, -1].argmax(dim=-1)
        out.append(int(nxt))
    return out


@torch.inference_mode()
def reference_outputs(model: torch.nn.Module, work: Work) -> list[list[float]]:
    return [model(torch.tensor([seq]), None)[0].tolist() for seq in work.fields["inputs"]]


def check_server(server: Server, mix: GenerateMix | PredictMix, model: torch.nn.Module) -> str:
    """PROBES concurrent requests (one per user of the mix, so LitServe's batched config
    pads them together); 'k/n same' as model_core in-process."""
    result = asyncio.run(
        run_load(server.target(), mix, PROBES, duration_s=0.05, warmup_s=0.0, keep_bodies=True)
    )
    same = 0
    for record in result.records:  # one per user: the window ends before any reply
        work = next(mix.user(record.user))  # that user's first request (seeded)
        if not record.ok or record.body is None:
            continue
        if server.api == "generate":
            same += streamed_tokens(server.config, record.body) == reference_tokens(model, work)
        else:
            got = json.loads(record.body)["outputs"]
            want = reference_outputs(model, work)
            same += all(
                abs(a - b) <= 1e-4 * max(1.0, abs(b))
                for g, w in zip(got, want, strict=True)
                for a, b in zip(g, w, strict=True)
            )
    return f"{same}/{PROBES}"


# ---- one point, one server -------------------------------------------------------------


def cpu_snapshot(server: Server) -> dict[str, float]:
    groups = {**server.pids(), "load generator": [os.getpid()]}
    snap = {name: sum(cpu_seconds(p) or 0.0 for p in pids) for name, pids in groups.items()}
    return {**snap, "t": time.perf_counter()}


def summarize(result: LoadResult) -> dict[str, Any]:
    ttft, latency = result.ttft_s(), result.latency_s()
    start, end = result.window_marks["start"], result.window_marks["end"]
    wall = end["t"] - start["t"]
    cpu = {k: (end[k] - start[k]) / wall for k in end if k != "t"}  # cores busy
    return {
        "users": result.users,
        "tokens_per_s": result.tokens_per_s,
        "requests_per_s": result.requests_per_s,
        "ttft_p50_s": statistics.median(ttft) if ttft else None,
        "ttft_p90_s": percentile(ttft, 0.90) if ttft else None,
        "ttft_p99_s": percentile(ttft, 0.99) if ttft else None,
        "ttft_samples": len(ttft),
        "latency_p50_s": statistics.median(latency) if latency else None,
        "latency_p99_s": percentile(latency, 0.99) if latency else None,
        "requests_sent_in_window": len(result.records),
        "errors": result.errors,
        "unfinished": result.unfinished,
        "drained_s": result.drained_s,
        "cpu_cores": cpu,
    }


def run_config(
    config: str, api: str, args: argparse.Namespace, model: torch.nn.Module
) -> dict[str, Any]:
    mix = GenerateMix(args.seed) if api == "generate" else PredictMix(args.seed)
    out: dict[str, Any] = {"load_average_before": os.getloadavg()[0], "points": {}}
    with running_server(config, api, args) as server:
        out["same_as_model_core"] = check_server(server, mix, model)
        for users in args.users:
            result = asyncio.run(
                run_load(
                    server.target(),
                    mix,
                    users,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    drain_s=args.drain,
                    on_window=lambda _edge, s=server: cpu_snapshot(s),
                )
            )
            point = out["points"][users] = summarize(result)
            print(f"  {config} {api} x{users}: {point_line(point, api)}", flush=True)
    out["load_average_after"] = os.getloadavg()[0]
    return out


def ms(value: float | None) -> str:
    return "-" if value is None else f"{1e3 * value:.0f}"


def point_line(p: dict[str, Any], api: str) -> str:
    head = f"{p['tokens_per_s']:.0f} tok/s, " if api == "generate" else ""
    key = "ttft" if api == "generate" else "latency"
    return (
        f"{head}{p['requests_per_s']:.1f} req/s, {key} p50/p99 {ms(p[f'{key}_p50_s'])}/"
        f"{ms(p[f'{key}_p99_s'])} ms, errors {p['errors']}, unfinished {p['unfinished']}"
    )


# ---- the ceiling: kvserve's engine in this process, the same mix -----------------------


class EngineClient:
    """One user of the mix sending to an in-process Engine (as kvserve's front end does,
    without HTTP): TTFT = submission -> first token event."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng

    async def send(
        self, work: Work, record: RequestRecord, window: Window, keep_body: bool
    ) -> None:
        ids = list(work.fields["prompt"].encode())
        new = work.fields["max_new_tokens"]
        record.sent = time.perf_counter()
        async for event in self.eng.request("generate", TEXT_MODEL, ids, max_new_tokens=new):
            now = time.perf_counter()
            if event[0] == "token":
                record.first = record.first or now
                record.tokens += 1
                window.tokens += window.holds(now)
            elif event[0] == "error":
                record.error = f"{event[2]}: {event[3]}"
        record.end = time.perf_counter()
        record.status = 200
        window.ended_requests += window.holds(record.end)

    def close(self) -> None:
        pass


def run_engine(args: argparse.Namespace) -> dict[str, Any]:
    """kvserve's engine (its `serve` defaults) in this process, driven by the same users."""
    out: dict[str, Any] = {"load_average_before": os.getloadavg()[0], "points": {}}
    settings = EngineSettings(models=[TEXT_MODEL], devices=["cpu"])
    with running_engine(settings) as (eng, run):
        worker = eng.stats()["workers"][0]["pid"]

        def snapshot(_edge: str) -> dict[str, float]:
            return {
                "front end": 0.0,  # in this process: counted as the load generator's
                "worker": cpu_seconds(worker) or 0.0,
                "load generator": cpu_seconds(os.getpid()) or 0.0,
                "t": time.perf_counter(),
            }

        for users in args.users:
            result = run(
                run_load(
                    lambda: EngineClient(eng),
                    GenerateMix(args.seed),
                    users,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    drain_s=args.drain,
                    on_window=snapshot,
                )
            )
            point = out["points"][users] = summarize(result)
            print(f"  {ENGINE} x{users}: {point_line(point, 'generate')}", flush=True)
    out["load_average_after"] = os.getloadavg()[0]
    return out


# ---- report ----------------------------------------------------------------------------


def best(points: dict[str, dict[str, Any]], key: str, lower: bool = False) -> tuple[str, float]:
    """The better LitServe configuration at one point for `key`: (config, value)."""
    values = [(c, points[c][key]) for c in LITSERVE_CONFIGS if points[c].get(key) is not None]
    pick = min if lower else max
    return pick(values, key=lambda cv: cv[1])


def print_tables(results: dict[str, dict[str, Any]], api: str, users: list[int]) -> None:
    key = "ttft" if api == "generate" else "latency"
    for n in users:
        rows = []
        for config in [c for c in (*CONFIGS, ENGINE) if c in results]:
            p = results[config]["points"][n]
            c = p["cpu_cores"]
            rows.append(
                [
                    config,
                    f"{p['tokens_per_s']:.0f}" if api == "generate" else "-",
                    ms(p[f"{key}_p50_s"]),
                    ms(p[f"{key}_p99_s"]),
                    f"{p['requests_per_s']:.2f}",
                    p["errors"] + p["unfinished"],
                    f"{c['front end']:.2f} / {c['worker']:.2f} / {c['load generator']:.2f}",
                ]
            )
        print(f"\n{api}, {n} user(s):\n")
        print_table(
            [
                "server",
                "tokens/s",
                f"{key} p50 ms",
                f"{key} p99 ms",
                "requests/s",
                "errors",
                "CPU cores: front end / worker / load gen",
            ],
            rows,
        )


def print_summary(results: dict[str, dict[str, Any]], api: str, users: list[int]) -> None:
    """Per point, kvserve against the better LitServe configuration for each metric (and,
    streaming, against its engine in-process on the same mix)."""
    rows = []
    for n in users:
        points = {c: results[c]["points"][n] for c in results}
        kv = points["kvserve"]
        if api == "generate":
            tps_cfg, tps = best(points, "tokens_per_s")
            ttft_cfg, ttft = best(points, "ttft_p99_s", lower=True)
            engine = points.get(ENGINE)
            rows.append(
                [
                    n,
                    f"{kv['tokens_per_s']:.0f} / {tps:.0f} ({tps_cfg.removeprefix('litserve-')})",
                    f"{kv['tokens_per_s'] / tps:.2f}x",
                    f"{kv['tokens_per_s'] / points['litserve-default']['tokens_per_s']:.2f}x",
                    f"{ms(kv['ttft_p99_s'])} / {ms(ttft)} ({ttft_cfg.removeprefix('litserve-')})",
                    f"{kv['ttft_p99_s'] / ttft:.3f}x",
                    f"{kv['tokens_per_s'] / engine['tokens_per_s']:.2f}" if engine else "-",
                ]
            )
        else:
            rps_cfg, rps = best(points, "requests_per_s")
            rows.append(
                [
                    n,
                    f"{kv['requests_per_s']:.1f} / {rps:.1f} ({rps_cfg.removeprefix('litserve-')})",
                    f"{kv['requests_per_s'] / rps:.2f}x",
                ]
            )
    print(f"\n{api}: kvserve against the better LitServe configuration per metric\n")
    if api == "generate":
        headers = [
            "users",
            "tokens/s kvserve / best LitServe",
            "ratio",
            "vs LitServe default",
            "TTFT p99 ms kvserve / best LitServe",
            "ratio",
            "HTTP / engine in-process",
        ]
    else:
        headers = ["users", "requests/s kvserve / best LitServe", "ratio"]
    print_table(headers, rows)


def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    gen = results.get("generate")
    if gen and CLAIM_USERS in gen["kvserve"]["points"]:
        points = {c: gen[c]["points"][CLAIM_USERS] for c in CONFIGS}
        kv = points["kvserve"]
        best_cfg, best_tps = best(points, "tokens_per_s")
        default_tps = points["litserve-default"]["tokens_per_s"]
        lines.append(
            verdict(
                f"at {CLAIM_USERS} users kvserve tokens/s >= {TOKENS_VS_BEST}x the best LitServe "
                "configuration's",
                kv["tokens_per_s"] >= TOKENS_VS_BEST * best_tps,
                f"kvserve {kv['tokens_per_s']:.0f}, {best_cfg} {best_tps:.0f}: "
                f"{kv['tokens_per_s'] / best_tps:.2f}x",
            )
        )
        lines.append(
            verdict(
                f"at {CLAIM_USERS} users kvserve tokens/s >= {TOKENS_VS_DEFAULT}x LitServe's "
                "default",
                kv["tokens_per_s"] >= TOKENS_VS_DEFAULT * default_tps,
                f"kvserve {kv['tokens_per_s']:.0f}, litserve-default {default_tps:.0f}: "
                f"{kv['tokens_per_s'] / default_tps:.2f}x",
            )
        )
        ttft_cfg, ttft_best = best(points, "ttft_p99_s", lower=True)
        lines.append(
            verdict(
                f"at {CLAIM_USERS} users kvserve TTFT p99 <= {TTFT_P99_VS_BEST}x the best LitServe "
                "configuration's",
                kv["ttft_p99_s"] <= TTFT_P99_VS_BEST * ttft_best,
                f"kvserve {ms(kv['ttft_p99_s'])} ms, {ttft_cfg} {ms(ttft_best)} ms: "
                f"{kv['ttft_p99_s'] / ttft_best:.2f}x",
            )
        )
    pred = results.get("predict")
    if pred and CLAIM_USERS in pred["kvserve"]["points"]:
        points = {c: pred[c]["points"][CLAIM_USERS] for c in CONFIGS}
        kv_rps = points["kvserve"]["requests_per_s"]
        best_cfg, best_rps = best(points, "requests_per_s")
        lines.append(
            verdict(
                f"at {CLAIM_USERS} users kvserve predict requests/s >= the best LitServe "
                "configuration's",
                kv_rps >= best_rps,
                f"kvserve {kv_rps:.1f}, {best_cfg} {best_rps:.1f}: {kv_rps / best_rps:.2f}x",
            )
        )
    for api, res in results.items():
        bad = {
            c: sum(p["errors"] + p["unfinished"] for p in res[c]["points"].values())
            for c in CONFIGS
        }
        if any(bad.values()):
            print(f"note: {api} requests failed or unfinished: {bad}")
    return lines


def plot(results: dict[str, dict[str, Any]], users: list[int], name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"kvserve": "o-", "litserve-default": "s--", "litserve-batched": "^--"}
    paths: list[Path] = []

    def series(api: str, config: str, key: str) -> list[float]:
        return [results[api][config]["points"][n][key] or float("nan") for n in users]

    def axes_users(ax: Any, ylabel: str, log_y: bool = False) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(n) for n in users])
        ax.set_xlabel("concurrent users (closed loop)")
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = RESULTS_DIR / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    if "generate" in results:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for config in CONFIGS:
            ax.plot(users, series("generate", config, "tokens_per_s"), styles[config], label=config)
        ax.set_title("text-lm streaming: tokens/s (mix: prompts 16-256 B, 16-128 new tokens)")
        axes_users(ax, "tokens/s")
        save(fig, f"{name}_tokens.png")

        fig, axs = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, key, title in zip(axs, ("ttft_p50_s", "ttft_p99_s"), ("p50", "p99"), strict=True):
            for config in CONFIGS:
                ms_values = [1e3 * v for v in series("generate", config, key)]
                ax.plot(users, ms_values, styles[config], label=config)
            ax.set_title(f"time to first token, {title}")
            axes_users(ax, "ms", log_y=True)
        save(fig, f"{name}_ttft.png")
        plot_ceiling(results["generate"], users, plt, save, name)
    if "predict" in results:
        fig, axs = plt.subplots(1, 2, figsize=(11, 4.5))
        for config in CONFIGS:
            axs[0].plot(
                users, series("predict", config, "requests_per_s"), styles[config], label=config
            )
            p99 = [1e3 * v for v in series("predict", config, "latency_p99_s")]
            axs[1].plot(users, p99, styles[config], label=config)
        axs[0].set_title("sine-regressor predict: requests/s")
        axes_users(axs[0], "requests/s")
        axs[1].set_title("predict latency p99")
        axes_users(axs[1], "ms", log_y=True)
        save(fig, f"{name}_predict.png")
    return paths


def plot_ceiling(
    generate: dict[str, Any], users: list[int], plt: Any, save: Any, name: str
) -> None:
    """kvserve over HTTP against its engine in-process on the same mix, and against the
    engine and the bare model_core loop of engine_throughput.json; where the CPU went."""
    kvserve = generate["kvserve"]
    source = RESULTS_DIR / "engine_throughput.json"
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.5))
    ax, ticks = axs[0], set(users)
    ax.plot(
        users,
        [kvserve["points"][n]["tokens_per_s"] for n in users],
        "o-",
        label="kvserve over HTTP (this mix)",
    )
    if ENGINE in generate:
        ax.plot(
            users,
            [generate[ENGINE]["points"][n]["tokens_per_s"] for n in users],
            "s-",
            label="its engine in-process (this mix)",
        )
    if source.exists():
        engine = json.loads(source.read_text())["per_streams"]
        streams = sorted(int(n) for n in engine)
        ticks |= set(streams)
        ax.plot(
            streams,
            [engine[str(n)]["engine_tokens_per_s"] for n in streams],
            "d:",
            label="engine in-process, engine_throughput.json (16 B, 64 tokens)",
        )
        ax.plot(
            streams,
            [engine[str(n)]["bare_tokens_per_s"] for n in streams],
            "k--",
            label="bare model_core loop, engine_throughput.json (same)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(n) for n in sorted(ticks)])
    ax.set_xlabel("concurrent users / streams")
    ax.set_ylabel("tokens/s")
    ax.set_title("kvserve against its engine ceiling")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axs[1]
    bottom = [0.0] * len(users)
    for part in ("worker", "front end", "load generator"):
        values = [kvserve["points"][n]["cpu_cores"][part] for n in users]
        ax.bar([str(n) for n in users], values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(os.cpu_count() or 2, color="k", lw=0.8, ls=":")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("CPU cores busy (window average)")
    ax.set_title("kvserve over HTTP: where the CPU goes")
    ax.legend()
    save(fig, f"{name}_ceiling.png")


# ---- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1,8,32,64", help="closed-loop user counts")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds/point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds running requests may take after it"
    )
    parser.add_argument("--apis", default="generate,predict", help="generate, predict or both")
    parser.add_argument(
        "--batch-timeout", type=float, default=0.01, help="LitServe batched: batch_timeout (s)"
    )
    parser.add_argument(
        "--litserve-fast-queue",
        action="store_true",
        help="LitServe's ZeroMQ transport (fast_queue=True) instead of its default queues",
    )
    parser.add_argument("--seed", type=int, default=0, help="the mix's seed")
    parser.add_argument(
        "--name",
        default="compare_litserve",
        help="results/<name>.json and <name>_*.png (default compare_litserve)",
    )
    parser.add_argument(
        "--skip-engine", action="store_true", help="no in-process engine run (the ceiling)"
    )
    parser.add_argument("--quick", action="store_true", help="users 1,8; 5 s windows")
    args = parser.parse_args()
    if args.quick:
        args.users, args.duration, args.warmup = "1,8", 5.0, 2.0
    args.users = [int(n) for n in str(args.users).split(",")]
    args.apis = args.apis.split(",")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # this process: the load generator and the reference checks
    started = time.perf_counter()
    load_before = os.getloadavg()
    models = {
        "generate": load(bundled_dir() / TEXT_MODEL),
        "predict": load(bundled_dir() / REGRESSION_MODEL),
    }
    results: dict[str, dict[str, Any]] = {}
    for api in args.apis:
        results[api] = {}
        for config in CONFIGS:
            print(f"{api}: {config} ...", flush=True)
            results[api][config] = run_config(config, api, args, models[api])
        if api == "generate" and not args.skip_engine:
            print(f"{api}: {ENGINE} ...", flush=True)
            results[api][ENGINE] = run_engine(args)
    total_s = time.perf_counter() - started
    print(
        f"\nSame cores ({os.cpu_count()} CPUs, affinity "
        f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}), one "
        f"server at a time; torch 1 intra-op thread in every model worker (kvserve's CPU "
        f"default; LitServe app sets it). Windows of {args.duration:g} s after {args.warmup:g} "
        f"s warm-up; closed-loop users; same seeded mix for all. LitServe batched: "
        f"max_batch_size {LITSERVE_BATCH}, batch_timeout {args.batch_timeout:g} s. Errors "
        f"count failed + unfinished requests sent in the window. CPU: cores busy over the "
        f"window. Load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after."
    )
    for api in results:
        print(
            f"\n{api}: same result as model_core in-process: "
            + ", ".join(f"{c} {results[api][c]['same_as_model_core']}" for c in CONFIGS)
        )
        print_tables(results[api], api, args.users)
        print_summary(results[api], api, args.users)
    print()
    lines = verdicts(results)
    paths = plot(results, args.users, args.name)
    for path in paths:
        print(f"plot written to {path.relative_to(REPO_ROOT)}")
    print(f"total run time {total_s / 60:.1f} min")
    write_results(
        args.name,
        {
            "goals": [line.split(" (")[0].split(": ", 1)[1] for line in lines],
            "config": {
                "users": args.users,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "drain_s": args.drain,
                "seed": args.seed,
                "mix": "generate: printable-ASCII prompts, uniform 16-256 bytes; max_new_tokens "
                "uniform 16-128; greedy, no stop. predict: one noisy sine, 16-256 steps",
                "load_generator": "benchmarks/loadgen.py: raw asyncio HTTP/1.1, closed loop, one "
                "kept-alive connection per user, in the benchmark process",
                "litserve_fast_queue": args.litserve_fast_queue,
                "litserve_batched": {
                    "max_batch_size": LITSERVE_BATCH,
                    "batch_timeout_s": args.batch_timeout,
                },
                "worker_torch_threads": 1,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "total_run_s": total_s,
            },
            "results": results,
            "passed": all(line.startswith("PASS") for line in lines) if lines else None,
            "verdicts": lines,
        },
    )


if __name__ == "__main__":
    main()
