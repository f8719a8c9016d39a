r"""Locust load test of a kvserve server: streaming generation, regression predict,
multi-turn sessions, speculative decoding and OpenAI completions.

Needs only `pip install locust` (it imports nothing from this repository). Run it with

    kvserve loadtest --host http://127.0.0.1:8000 --users 8 --run-time 30s --out loadtest/

or with Locust itself, headless for 30 s, writing the CSV and HTML reports:

    locust -f clients/locustfile.py --headless --only-summary -H http://127.0.0.1:8000 \
        -u 8 -r 8 -t 30s --csv loadtest/kvserve --html loadtest/report.html MixedUser

(drop `--headless ...` for the web UI on http://localhost:8089).

User classes (name them after the options; none named: all of them, equally weighted):
    StreamingGenerateUser  POST /v1/generate, streamed
    PredictUser            POST /v1/predict (a batch of sine waves for a regression model)
    SessionUser            open a session, several streamed turns on it, close it
    SpeculativeUser        POST /v1/speculative, streamed
    CompletionsUser        POST /v1/completions (OpenAI), streamed
    MixedUser              all of the above, weighted by KVSERVE_MIX

Streams are timed as the client sees them, each figure a Locust entry of its own (type
"SSE") next to the request's end-to-end entry, so the tables, CSV and HTML report show them:
    "<kind> TTFT"      request sent -> first token (completions: first chunk with text), ms
    "<kind> ITL"       one entry per gap between consecutive token events, ms. The server
                       writes every token already queued for a stream in one write, so
                       tokens that arrive together show gaps of ~0 ms. Native endpoints
                       only: a completions chunk may carry several tokens.
    "<kind> tokens/s (value in response_time)"
                       tokens of the stream / its end-to-end seconds; the rate stands in
                       the response-time columns
<kind> is generate, speculative, session or completions. A stream that ends without
`event: done` (completions: `data: [DONE]`), sends `event: error`, or whose token count
disagrees with the `usage` it reports, is a failure.

Settings (environment variables). A distribution is `N` (fixed), `LO:HI` (uniform,
inclusive) or `lognormal:MEAN:SIGMA:MAX` (a lognormal with that mean and log-space sigma,
cut to [1, MAX]); prompts and new tokens are cut further to fit the model's max_seq_len.
    KVSERVE_PROMPT_TOKENS     prompt length, tokens (random printable ASCII, one byte per
                              token for the byte-level text models)       default 16:256
    KVSERVE_NEW_TOKENS        max_new_tokens (native requests send `"stop": []`, so the
                              length is honoured)                          default 16:128
    KVSERVE_SESSION_TURNS     turns per session                            default 3
    KVSERVE_PREDICT_STEPS     steps per predict sequence                   default 16:128
    KVSERVE_PREDICT_BATCH     sequences per predict request                default 1:4
    KVSERVE_WAIT              seconds between tasks, uniform LO:HI or fixed default 0:0.5
    KVSERVE_MODEL             text model                                   default text-lm
    KVSERVE_DRAFT_MODEL       speculative draft model                default text-lm-draft
    KVSERVE_REGRESSION_MODEL  predict model                         default sine-regressor
    KVSERVE_MIX               MixedUser weights    default generate=4,predict=2,session=2,
                                                           speculative=1,completions=1
    KVSERVE_API_KEY           sent as `Authorization: Bearer <key>`        default none
    KVSERVE_TIMEOUT           read timeout of a request, seconds           default 300
"""

from __future__ import annotations

import json
import math
import os
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

from locust import HttpUser

PROMPT_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
MIX_KINDS = ("generate", "predict", "session", "speculative", "completions")


# --- settings: pure functions, testable without a server --------------------------------


@dataclass(frozen=True)
class Distribution:
    """Integers (or seconds, `floats`) drawn by `draw(rng)`; see `parse_distribution`."""

    kind: str  # "fixed" | "uniform" | "lognormal"
    params: tuple[float, ...]
    floats: bool = False

    def draw(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            lo, hi = self.params
            return rng.uniform(lo, hi) if self.floats else rng.randint(int(lo), int(hi))
        mean, sigma, cap = self.params
        # E[exp(N(mu, sigma^2))] = exp(mu + sigma^2 / 2), so this mu gives that mean.
        value = rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
        value = min(cap, max(1.0, value))
        return value if self.floats else round(value)


def parse_distribution(text: str, floats: bool = False, name: str = "value") -> Distribution:
    """`"N"`, `"LO:HI"` or `"lognormal:MEAN:SIGMA:MAX"` as a Distribution; ValueError that
    names `name` and the accepted forms otherwise. Integer forms need values >= 1, float
    forms (`floats`, e.g. wait seconds) values >= 0."""
    forms = "N, LO:HI or lognormal:MEAN:SIGMA:MAX"
    parts = [p.strip() for p in text.strip().split(":")]
    low = 0.0 if floats else 1.0
    number = float if floats else int
    try:
        if parts[0].lower() == "lognormal":
            if len(parts) != 4:
                raise ValueError(f"lognormal takes MEAN:SIGMA:MAX, got {len(parts) - 1} values")
            mean, sigma, cap = (float(p) for p in parts[1:])
            if not (mean >= 1 and sigma >= 0 and cap >= 1):
                raise ValueError("needs MEAN >= 1, SIGMA >= 0, MAX >= 1")
            return Distribution("lognormal", (mean, sigma, cap), floats)
        values = [number(p) for p in parts]
        if not all(math.isfinite(v) and v >= low for v in values):
            raise ValueError(f"values must be finite and >= {low:g}")
        if len(values) == 1:
            return Distribution("fixed", (values[0],), floats)
        if len(values) == 2 and values[0] <= values[1]:
            return Distribution("uniform", (values[0], values[1]), floats)
        raise ValueError("a range is LO:HI with LO <= HI")
    except ValueError as exc:
        raise ValueError(f"{name}={text!r}: {exc} (expected {forms})") from None


def parse_mix(text: str) -> dict[str, int]:
    """`"generate=4,predict=1"` -> weights per kind (kinds not named get 0)."""
    weights = dict.fromkeys(MIX_KINDS, 0)
    for item in text.split(","):
        if not item.strip():
            continue
        kind, eq, weight = item.partition("=")
        kind = kind.strip()
        if kind not in weights or not eq or not weight.strip().isdigit():
            raise ValueError(
                f"KVSERVE_MIX={text!r}: {item.strip()!r} is not KIND=WEIGHT with KIND one of "
                f"{', '.join(MIX_KINDS)} and WEIGHT an integer >= 0"
            )
        weights[kind] = int(weight)
    if not any(weights.values()):
        raise ValueError(f"KVSERVE_MIX={text!r}: give at least one kind a weight > 0")
    return weights


def fit(prompt: int, new: int, room: int) -> tuple[int, int]:
    """Shrink (prompt, new), both >= 1, in proportion until prompt + new <= room (>= 2)."""
    if prompt + new <= room:
        return prompt, new
    new = max(1, new * room // (prompt + new))
    return max(1, room - new), new


class SseParser:
    """Server-Sent Events from raw bytes as they arrive: `feed(chunk)` returns the events
    completed by it, each `(event name or None, data)`."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:
                if self._data or self._event is not None:
                    events.append((self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif line.startswith(":"):
                continue  # a comment (keep-alive)
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)
        return events


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


MODEL = _env("KVSERVE_MODEL", "text-lm")
DRAFT_MODEL = _env("KVSERVE_DRAFT_MODEL", "text-lm-draft")
REGRESSION_MODEL = _env("KVSERVE_REGRESSION_MODEL", "sine-regressor")
PROMPT_TOKENS = parse_distribution(
    _env("KVSERVE_PROMPT_TOKENS", "16:256"), name="KVSERVE_PROMPT_TOKENS"
)
NEW_TOKENS = parse_distribution(_env("KVSERVE_NEW_TOKENS", "16:128"), name="KVSERVE_NEW_TOKENS")
SESSION_TURNS = parse_distribution(_env("KVSERVE_SESSION_TURNS", "3"), name="KVSERVE_SESSION_TURNS")
PREDICT_STEPS = parse_distribution(
    _env("KVSERVE_PREDICT_STEPS", "16:128"), name="KVSERVE_PREDICT_STEPS"
)
PREDICT_BATCH = parse_distribution(
    _env("KVSERVE_PREDICT_BATCH", "1:4"), name="KVSERVE_PREDICT_BATCH"
)
WAIT = parse_distribution(_env("KVSERVE_WAIT", "0:0.5"), floats=True, name="KVSERVE_WAIT")
MIX = parse_mix(_env("KVSERVE_MIX", "generate=4,predict=2,session=2,speculative=1,completions=1"))
API_KEY = os.environ.get("KVSERVE_API_KEY", "").strip()
TIMEOUT = (10.0, float(_env("KVSERVE_TIMEOUT", "300")))  # (connect, read) seconds


# --- the users -------------------------------------------------------------------------


@dataclass
class StreamResult:
    """A stream's client-side timings (perf_counter seconds) and its final event."""

    start: float
    token_times: list[float]
    done: dict[str, Any]


class KvserveUser(HttpUser):
    """What every kvserve user does; the classes below choose which of it."""

    abstract = True
    # Cards of the models used (max_seq_len, input_dim): fetched once per process each.
    cards: ClassVar[dict[str, dict[str, Any]]] = {}

    def wait_time(self) -> float:
        """Seconds between two tasks, drawn from KVSERVE_WAIT."""
        return WAIT.draw(self.rng)

    def on_start(self) -> None:
        self.rng = random.Random()
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    # -- helpers --

    def card(self, model: str) -> dict[str, Any]:
        """The model's card from GET /v1/models/{model} ({} when that fails, which is
        recorded as a failure of "model card")."""
        if model not in self.cards:
            with self.client.get(
                f"/v1/models/{model}", name="model card", catch_response=True, timeout=TIMEOUT
            ) as resp:
                if resp.status_code != 200:
                    resp.failure(_http_error(resp))
                    return {}
                self.cards[model] = resp.json()
        return self.cards[model]

    def room(self, *models: str) -> int:
        """The longest prompt + new tokens every one of `models` takes."""
        lengths = [self.card(m).get("max_seq_len") for m in models]
        return min((n for n in lengths if n), default=1 << 30)

    def lengths(self, room: int) -> tuple[int, int]:
        """A (prompt, max_new_tokens) pair drawn from the distributions, cut to `room`."""
        return fit(int(PROMPT_TOKENS.draw(self.rng)), int(NEW_TOKENS.draw(self.rng)), room)

    def prompt(self, length: int) -> str:
        return "".join(self.rng.choices(PROMPT_CHARS, k=length))

    def metric(self, name: str, value: float) -> None:
        """A streaming figure as a Locust entry of its own (see the module docstring)."""
        self.environment.events.request.fire(
            request_type="SSE",
            name=name,
            response_time=value,
            response_length=0,
            exception=None,
            context={},
        )

    def report_stream(self, kind: str, result: StreamResult, end: float) -> None:
        times = result.token_times
        if times:
            self.metric(f"{kind} TTFT", (times[0] - result.start) * 1000)
        for a, b in pairwise(times):
            self.metric(f"{kind} ITL", (b - a) * 1000)
        self.metric(f"{kind} tokens/s (value in response_time)", len(times) / (end - result.start))

    def stream(
        self, path: str, body: dict[str, Any], kind: str, name: str, **kw: Any
    ) -> StreamResult | None:
        """POST a native streaming request; its entry `name` covers the whole stream. The
        stream's figures are reported as `kind ...` entries; None when it failed."""
        start = time.perf_counter()
        with self.client.post(
            path, json=body, name=name, stream=True, catch_response=True, timeout=TIMEOUT, **kw
        ) as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))
                return None
            result = StreamResult(start, [], {})
            problem, size = None, 0
            try:
                parser = SseParser()
                for chunk in resp.iter_content(chunk_size=None):
                    now = time.perf_counter()
                    size += len(chunk)
                    for event, data in parser.feed(chunk):
                        if event == "token":
                            result.token_times.append(now)
                        elif event == "done":
                            result.done = json.loads(data)
                        elif event == "error":
                            problem = f"event: error {data}"
            except Exception as exc:  # a broken connection or body (not a stopping user)
                problem = f"stream broken: {exc!r}"
            end = time.perf_counter()
            resp.request_meta["response_time"] = (end - start) * 1000
            resp.request_meta["response_length"] = size
            usage = result.done.get("usage") or {}
            if problem is None and not result.done:
                problem = "the stream ended without `event: done`"
            if problem is None and usage.get("completion_tokens") != len(result.token_times):
                problem = (
                    f"{len(result.token_times)} token events, but usage says "
                    f"{usage.get('completion_tokens')} completion tokens"
                )
            if problem is not None:
                resp.failure(problem)
                return None
            resp.success()
        self.report_stream(kind, result, end)
        return result

    # -- the tasks (plain methods; each user class below runs one, MixedUser all) --

    def generate(self) -> None:
        prompt, new = self.lengths(self.room(MODEL))
        body = {
            "model": MODEL,
            "prompt": self.prompt(prompt),
            "max_new_tokens": new,
            "stop": [],
            "stream": True,
        }
        self.stream("/v1/generate", body, "generate", "generate (stream)")

    def speculative(self) -> None:
        prompt, new = self.lengths(self.room(MODEL, DRAFT_MODEL))
        body = {
            "model": MODEL,
            "draft_model": DRAFT_MODEL,
            "prompt": self.prompt(prompt),
            "max_new_tokens": new,
            "stop": [],
            "stream": True,
        }
        self.stream("/v1/speculative", body, "speculative", "speculative (stream)")

    def session(self) -> None:
        """Open a session, run its turns (each cut to fit what is left of max_seq_len),
        close it. A failed turn closes it early."""
        room = self.room(MODEL)
        with self.client.post(
            "/v1/sessions",
            json={"model": MODEL, "ttl_s": 300},
            name="session open",
            catch_response=True,
            timeout=TIMEOUT,
        ) as resp:
            if resp.status_code != 201:
                resp.failure(_http_error(resp))
                return
            session_id = resp.json()["session_id"]
        length = 0
        for _ in range(int(SESSION_TURNS.draw(self.rng))):
            if room - length < 2:
                break
            prompt, new = self.lengths(room - length)
            body = {
                "prompt": self.prompt(prompt),
                "max_new_tokens": new,
                "stop": [],
                "stream": True,
            }
            result = self.stream(
                f"/v1/sessions/{session_id}/generate",
                body,
                "session",
                "session turn (stream)",
                headers={"X-Session-ID": session_id},
            )
            if result is None:
                break
            length += prompt + len(result.token_times)
        with self.client.delete(
            f"/v1/sessions/{session_id}",
            name="session close",
            headers={"X-Session-ID": session_id},
            catch_response=True,
            timeout=TIMEOUT,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))

    def predict(self) -> None:
        """A batch of sine waves (the regression demo's task) of drawn lengths."""
        card = self.card(REGRESSION_MODEL)
        max_steps, dim = card.get("max_seq_len") or 1 << 30, card.get("input_dim") or 1
        inputs = []
        for _ in range(int(PREDICT_BATCH.draw(self.rng))):
            steps = min(max_steps, int(PREDICT_STEPS.draw(self.rng)))
            amp, freq = self.rng.uniform(0.5, 2.0), self.rng.uniform(0.02, 0.2)
            phase = self.rng.uniform(0, 2 * math.pi)
            wave = (amp * math.sin(2 * math.pi * freq * t + phase) for t in range(steps))
            inputs.append([[round(x, 4)] * dim for x in wave])
        with self.client.post(
            "/v1/predict",
            json={"model": REGRESSION_MODEL, "inputs": inputs},
            name="predict",
            catch_response=True,
            timeout=TIMEOUT,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))
            elif len(resp.json().get("outputs", [])) != len(inputs):
                resp.failure(f"{len(inputs)} inputs, but not as many outputs")

    def completions(self) -> None:
        """OpenAI /v1/completions, streamed: `data: {chunk}` lines, then `data: [DONE]`.
        Tokens are counted from the final usage chunk (a chunk may carry several)."""
        prompt, new = self.lengths(self.room(MODEL))
        body = {
            "model": MODEL,
            "prompt": self.prompt(prompt),
            "max_tokens": new,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        first: float | None = None
        with self.client.post(
            "/v1/completions",
            json=body,
            name="completions (stream)",
            stream=True,
            catch_response=True,
            timeout=TIMEOUT,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))
                return
            problem, size, finished, tokens = None, 0, False, None
            try:
                parser = SseParser()
                for chunk in resp.iter_content(chunk_size=None):
                    now = time.perf_counter()
                    size += len(chunk)
                    for _, data in parser.feed(chunk):
                        if data == "[DONE]":
                            finished = True
                            continue
                        message = json.loads(data)
                        if "error" in message:
                            problem = f"error chunk {data}"
                        if first is None and any(c.get("text") for c in message["choices"]):
                            first = now
                        if message.get("usage"):
                            tokens = message["usage"]["completion_tokens"]
            except Exception as exc:  # a broken connection or body (not a stopping user)
                problem = f"stream broken: {exc!r}"
            end = time.perf_counter()
            resp.request_meta["response_time"] = (end - start) * 1000
            resp.request_meta["response_length"] = size
            if problem is None and not finished:
                problem = "the stream ended without `data: [DONE]`"
            if problem is None and tokens is None:
                problem = "no usage chunk (asked for with stream_options.include_usage)"
            if problem is not None:
                resp.failure(problem)
                return
            resp.success()
        if first is not None:
            self.metric("completions TTFT", (first - start) * 1000)
        self.metric("completions tokens/s (value in response_time)", (tokens or 0) / (end - start))


def _http_error(resp: Any) -> str:
    """A failure message for a non-2xx answer (status 0: the request never got one)."""
    if not resp.status_code:
        return f"no response: {resp.error!r}"
    return f"HTTP {resp.status_code}: {resp.text[:300]}"


def _only(method: Callable[[KvserveUser], None]) -> dict[Callable[[KvserveUser], None], int]:
    return {method: 1}


class StreamingGenerateUser(KvserveUser):
    """POST /v1/generate, streamed."""

    tasks = _only(KvserveUser.generate)


class PredictUser(KvserveUser):
    """POST /v1/predict on the regression model."""

    tasks = _only(KvserveUser.predict)


class SessionUser(KvserveUser):
    """Open a session, KVSERVE_SESSION_TURNS streamed turns, close it."""

    tasks = _only(KvserveUser.session)


class SpeculativeUser(KvserveUser):
    """POST /v1/speculative (KVSERVE_MODEL with KVSERVE_DRAFT_MODEL), streamed."""

    tasks = _only(KvserveUser.speculative)


class CompletionsUser(KvserveUser):
    """OpenAI POST /v1/completions, streamed."""

    tasks = _only(KvserveUser.completions)


class MixedUser(KvserveUser):
    """Every kind of request, weighted by KVSERVE_MIX."""

    tasks: ClassVar = {
        getattr(KvserveUser, kind): weight for kind, weight in MIX.items() if weight > 0
    }
