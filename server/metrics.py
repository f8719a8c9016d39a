"""Prometheus metrics, named and meant as vLLM's (`vllm:` -> `kvserve:`).

Request-path series (histograms, counters, the running/waiting gauges) are updated by the
routes through `Metrics` or one `StreamTimer` per request; every one is labelled `model`.
Engine series (KV cache, worker queues) come from the latest `engine.stats()["workers"]`
snapshot handed to `set_engine_stats`, and are produced at scrape time by a collector, so:
- `kvserve:kv_cache_evictions_total` / `kvserve:kv_cache_rebuilds_total` are real counters
  (the workers' own cumulative counts; a restarted worker starts again from 0, which
  Prometheus' `rate()` reads as a counter reset);
- a worker missing from the snapshot leaves no stale series behind.

Each `Metrics` owns a private `CollectorRegistry`, so several apps in one process (tests)
never clash. Counters and histograms also expose prometheus_client's `_created` samples
(`prometheus_client.disable_created_metrics()` drops them process-wide).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "kvserve:"

# vLLM's buckets, extended downwards: small CPU models answer in milliseconds.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
    10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass
class _ModelSeries:
    """The labelled children of one model, looked up once (labels() takes a lock)."""

    ttft: Any
    inter_token: Any
    e2e: Any
    queue_time: Any
    prompt_tokens: Any
    generation_tokens: Any
    running: Any
    waiting: Any


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, ["model"], buckets=buckets, registry=r)

        self.ttft = histogram(
            "time_to_first_token_seconds",
            "Time from submission to the first output of a request.",
            TTFT_BUCKETS,
        )
        self.inter_token = histogram(
            "inter_token_latency_seconds",
            "Time between consecutive outputs of a request.",
            INTER_TOKEN_BUCKETS,
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds",
            "Time from submission to the end of a request (success or failure).",
            REQUEST_BUCKETS,
        )
        self.queue_time = histogram(
            "request_queue_time_seconds",
            "Time a request waited before a worker started on it.",
            REQUEST_BUCKETS,
        )
        # prometheus_client adds the `_total` suffix to counters.
        self.success = Counter(
            PREFIX + "request_success",
            "Requests that finished, by finish reason.",
            ["model", "finish_reason"],
            registry=r,
        )
        self.failure = Counter(
            PREFIX + "request_failure",
            "Requests that failed, by error type.",
            ["model", "error_type"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens (inputs) processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Outputs generated.", ["model"], registry=r
        )
        self.draft_tokens = Counter(
            PREFIX + "spec_decode_num_draft_tokens",
            "Tokens proposed by draft models.",
            ["model"],
            registry=r,
        )
        self.accepted_tokens = Counter(
            PREFIX + "spec_decode_num_accepted_tokens",
            "Draft tokens accepted by target models.",
            ["model"],
            registry=r,
        )
        self.acceptance_rate = Gauge(
            PREFIX + "spec_decode_acceptance_rate",
            "Accepted / proposed draft tokens over the process lifetime.",
            ["model"],
            registry=r,
        )
        self.running = Gauge(
            PREFIX + "num_requests_running",
            "Requests producing outputs (first output arrived, not finished).",
            ["model"],
            registry=r,
        )
        self.waiting = Gauge(
            PREFIX + "num_requests_waiting",
            "Requests submitted that have produced nothing yet.",
            ["model"],
            registry=r,
        )
        self._engine = _EngineCollector()
        r.register(self._engine)
        self._series: dict[str, _ModelSeries] = {}
        self._spec_totals: dict[str, list[int]] = {}  # model -> [proposed, accepted]

    def _model_series(self, model: str) -> _ModelSeries:
        s = self._series.get(model)
        if s is None:
            s = self._series[model] = _ModelSeries(
                ttft=self.ttft.labels(model),
                inter_token=self.inter_token.labels(model),
                e2e=self.e2e.labels(model),
                queue_time=self.queue_time.labels(model),
                prompt_tokens=self.prompt_tokens.labels(model),
                generation_tokens=self.generation_tokens.labels(model),
                running=self.running.labels(model),
                waiting=self.waiting.labels(model),
            )
        return s

    # Request life cycle: waiting -> (running) -> finished.
    def request_waiting(self, model: str) -> None:
        self._model_series(model).waiting.inc()

    def request_running(self, model: str) -> None:
        s = self._model_series(model)
        s.waiting.dec()
        s.running.inc()

    def request_finished(
        self,
        model: str,
        was_running: bool,
        finish_reason: str | None,
        error_type: str | None,
        e2e_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        s = self._model_series(model)
        (s.running if was_running else s.waiting).dec()
        if error_type is None:
            self.success.labels(model, finish_reason or "unknown").inc()
        else:
            self.failure.labels(model, error_type).inc()
        s.e2e.observe(e2e_s)
        if prompt_tokens:
            s.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            s.generation_tokens.inc(completion_tokens)

    def observe_ttft(self, model: str, seconds: float) -> None:
        self._model_series(model).ttft.observe(seconds)

    def observe_inter_token(self, model: str, seconds: float) -> None:
        self._model_series(model).inter_token.observe(seconds)

    def observe_queue_time(self, model: str, seconds: float) -> None:
        self._model_series(model).queue_time.observe(max(0.0, seconds))

    def observe_speculative(self, model: str, proposed: int, accepted: int) -> None:
        """One speculative request's draft statistics (`model` is the target)."""
        self.draft_tokens.labels(model).inc(proposed)
        self.accepted_tokens.labels(model).inc(accepted)
        totals = self._spec_totals.setdefault(model, [0, 0])
        totals[0] += proposed
        totals[1] += accepted
        if totals[0]:
            self.acceptance_rate.labels(model).set(totals[1] / totals[0])

    def set_engine_stats(self, workers: list[dict[str, Any]]) -> None:
        """Keep `engine.stats()["workers"]` for the next scrape (a worker that has not
        reported yet has only some keys; its missing series are left out)."""
        self._engine.workers = list(workers)

    def render(self) -> tuple[bytes, str]:
        """The body and content type of GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector(Collector):
    """Engine series from the latest worker snapshot, built at scrape time."""

    def __init__(self) -> None:
        self.workers: list[dict[str, Any]] = []

    def describe(self) -> list[Metric]:
        return []  # families depend on the snapshot; skip the registry's name check

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "worker"]

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=labels)

        usage = gauge("kv_cache_usage_perc", "Fraction (0-1) of the worker's KV budget in use.")
        used = gauge("kv_cache_used_bytes", "KV cache bytes in use on the worker.")
        budget = gauge("kv_cache_budget_bytes", "KV cache budget of the worker.")
        running = gauge("worker_requests_running", "Sequences in the worker's batch.")
        waiting = gauge("worker_requests_waiting", "Requests queued in the worker's scheduler.")
        evictions = CounterMetricFamily(
            PREFIX + "kv_cache_evictions", "Session caches evicted by the worker.", labels=labels
        )
        rebuilds = CounterMetricFamily(
            PREFIX + "kv_cache_rebuilds",
            "Session caches recomputed from history by the worker.",
            labels=labels,
        )
        for w in self.workers:
            values = ["all", str(w.get("worker", "?"))]
            _add(budget, values, w, "budget_bytes")
            _add(used, values, w, "used_bytes")
            _add(running, values, w, "running")
            _add(waiting, values, w, "waiting")
            _add(evictions, values, w, "evictions")
            _add(rebuilds, values, w, "rebuilds")
            if "used_bytes" in w and "budget_bytes" in w:
                b = w["budget_bytes"]
                usage.add_metric(values, w["used_bytes"] / b if b > 0 else 0.0)
        yield from (usage, used, budget, evictions, rebuilds, running, waiting)


def _add(
    family: GaugeMetricFamily | CounterMetricFamily,
    values: list[str],
    stats: Mapping[str, Any],
    key: str,
) -> None:
    if stats.get(key) is not None:
        family.add_metric(values, float(stats[key]))


class StreamTimer:
    """Per-request timing: create at submission, `on_output()` per output, `on_end()` once.

    The first output records TTFT and moves the request from waiting to running; each later
    one records the gap since the previous. `on_end` records e2e latency, the outcome and
    token counters, and takes the request off the gauges; calls after the first are no-ops,
    so a route may call it from a `finally` (client gone) as well as on `done`/`error`.
    """

    __slots__ = ("_clock", "_last", "ended", "metrics", "model", "outputs", "start")

    def __init__(
        self, metrics: Metrics, model: str, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.metrics = metrics
        self.model = model
        self._clock = clock
        self.start = clock()
        self._last: float | None = None  # time of the latest output
        self.outputs = 0
        self.ended = False
        metrics.request_waiting(model)

    def on_output(self) -> None:
        if self.ended:
            return
        now = self._clock()
        if self._last is None:
            self.metrics.observe_ttft(self.model, now - self.start)
            self.metrics.request_running(self.model)
        else:
            self.metrics.observe_inter_token(self.model, now - self._last)
        self._last = now
        self.outputs += 1

    def on_end(
        self,
        finish_reason: str | None,
        error_type: str | None,
        usage: Mapping[str, int] | None = None,
        speculative: Mapping[str, Any] | None = None,
    ) -> None:
        """End the request. usage: `{"prompt_tokens", "completion_tokens", ...}` (without it,
        completion = outputs seen); speculative: the done event's statistics, if any."""
        if self.ended:
            return
        self.ended = True
        usage = usage or {}
        self.metrics.request_finished(
            self.model,
            was_running=self._last is not None,
            finish_reason=finish_reason,
            error_type=error_type,
            e2e_s=self._clock() - self.start,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", self.outputs)),
        )
        if speculative:
            self.metrics.observe_speculative(
                self.model, int(speculative.get("proposed", 0)), int(speculative.get("accepted", 0))
            )
