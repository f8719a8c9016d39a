"""server.metrics: the exposition parses and the request/engine series mean what they say."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from server.metrics import Metrics, StreamTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def run_stream(
    metrics: Metrics, clock: FakeClock, model: str, outputs: int, usage: dict[str, int]
) -> StreamTimer:
    timer = StreamTimer(metrics, model, clock=clock)
    for _ in range(outputs):
        clock.now += 0.01
        timer.on_output()
    timer.on_end("length", None, usage)
    return timer


def test_stream_timers_fill_histograms_counters_and_empty_the_gauges() -> None:
    metrics, clock = Metrics(), FakeClock()
    lengths = [3, 1, 5]
    for n in lengths:
        run_stream(metrics, clock, "lm", n, {"prompt_tokens": 4, "completion_tokens": n})
    failed = StreamTimer(metrics, "lm", clock=clock)  # fails before any output
    clock.now += 0.5
    failed.on_end(None, "timeout", None)
    failed.on_end(None, "timeout", None)  # idempotent

    v = lambda name, **kw: value(metrics, name, model="lm", **kw)
    assert v("kvserve:time_to_first_token_seconds_count") == len(lengths)
    assert abs(v("kvserve:time_to_first_token_seconds_sum") - 0.01 * len(lengths)) < 1e-9
    assert v("kvserve:inter_token_latency_seconds_count") == sum(lengths) - len(lengths)
    assert v("kvserve:e2e_request_latency_seconds_count") == len(lengths) + 1
    assert v("kvserve:request_success_total", finish_reason="length") == len(lengths)
    assert v("kvserve:request_failure_total", error_type="timeout") == 1
    assert v("kvserve:prompt_tokens_total") == 4 * len(lengths)
    assert v("kvserve:generation_tokens_total") == sum(lengths)
    assert v("kvserve:num_requests_running") == 0
    assert v("kvserve:num_requests_waiting") == 0


def test_gauges_follow_a_request_through_waiting_and_running() -> None:
    metrics, clock = Metrics(), FakeClock()
    timer = StreamTimer(metrics, "lm", clock=clock)
    assert value(metrics, "kvserve:num_requests_waiting", model="lm") == 1
    assert value(metrics, "kvserve:num_requests_running", model="lm") == 0
    timer.on_output()
    assert value(metrics, "kvserve:num_requests_waiting", model="lm") == 0
    assert value(metrics, "kvserve:num_requests_running", model="lm") == 1
    timer.on_end(None, "cancelled")  # client went away: no usage, completion = outputs seen
    timer.on_output()  # late output after the end: ignored
    assert value(metrics, "kvserve:num_requests_running", model="lm") == 0
    assert value(metrics, "kvserve:generation_tokens_total", model="lm") == 1
    assert value(metrics, "kvserve:request_failure_total", model="lm", error_type="cancelled") == 1


def test_speculative_counters_and_lifetime_acceptance_rate() -> None:
    metrics = Metrics()
    timer = StreamTimer(metrics, "target", clock=FakeClock())
    timer.on_output()
    timer.on_end(
        "length", None, {"completion_tokens": 1}, speculative={"proposed": 8, "accepted": 6}
    )
    metrics.observe_speculative("target", proposed=8, accepted=2)
    assert value(metrics, "kvserve:spec_decode_num_draft_tokens_total", model="target") == 16
    assert value(metrics, "kvserve:spec_decode_num_accepted_tokens_total", model="target") == 8
    assert value(metrics, "kvserve:spec_decode_acceptance_rate", model="target") == 0.5


def test_queue_time_is_observed_as_given_and_never_negative() -> None:
    metrics = Metrics()
    metrics.observe_queue_time("lm", 0.25)
    metrics.observe_queue_time("lm", -0.001)  # a caller's estimate may undershoot
    assert value(metrics, "kvserve:request_queue_time_seconds_count", model="lm") == 2
    assert value(metrics, "kvserve:request_queue_time_seconds_sum", model="lm") == 0.25


def test_engine_stats_set_kv_series_per_worker() -> None:
    metrics = Metrics()
    metrics.set_engine_stats(
        [
            {"worker": 0, "budget_bytes": 1000, "used_bytes": 250, "evictions": 3,
             "rebuilds": 2, "running": 4, "waiting": 1, "alive": True},
            {"worker": 1, "alive": True},  # has not reported its counters yet
        ]
    )  # fmt: skip
    w0 = {"model": "all", "worker": "0"}
    assert value(metrics, "kvserve:kv_cache_usage_perc", **w0) == 0.25
    assert value(metrics, "kvserve:kv_cache_used_bytes", **w0) == 250
    assert value(metrics, "kvserve:kv_cache_budget_bytes", **w0) == 1000
    assert value(metrics, "kvserve:kv_cache_evictions_total", **w0) == 3
    assert value(metrics, "kvserve:kv_cache_rebuilds_total", **w0) == 2
    assert value(metrics, "kvserve:worker_requests_running", **w0) == 4
    assert value(metrics, "kvserve:worker_requests_waiting", **w0) == 1
    assert not [k for k in samples(metrics) if ("worker", "1") in k[1]]

    metrics.set_engine_stats([{"worker": 0, "budget_bytes": 0, "used_bytes": 0}])
    assert value(metrics, "kvserve:kv_cache_usage_perc", **w0) == 0.0


def test_two_instances_do_not_share_series() -> None:
    a, b = Metrics(), Metrics()
    run_stream(a, FakeClock(), "lm", 2, {"prompt_tokens": 1, "completion_tokens": 2})
    assert value(a, "kvserve:generation_tokens_total", model="lm") == 2
    assert ("kvserve:generation_tokens_total", frozenset({("model", "lm")})) not in samples(b)
