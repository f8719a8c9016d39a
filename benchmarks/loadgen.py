"""A cheap closed-loop HTTP load generator: N users, each sending its next request when
the previous one has ended, on raw HTTP/1.1 over asyncio streams (one kept-alive
connection per user), measuring per request the time to first token, the tokens
streamed and the end.

It sends the same mix a Locust user class would (the request bodies come from
`GenerateMix` / `PredictMix`, seeded per user, so every server gets the same sequence of
requests) and reports what Locust's CSV does (requests/s, failures, latency percentiles)
plus the time to first token and tokens/s. Why not Locust itself, for this comparison:

- TTFT: Locust's FastHttpUser reads a streamed body with geventhttpclient's
  `read(chunk_size)`, which blocks until chunk_size bytes have arrived, so the first
  token is seen only when a later one fills the chunk (a token event is 40-70 bytes); a
  small chunk_size costs a Python call per few bytes. Locust's HttpUser (requests) yields
  chunks as they come but costs milliseconds of CPU per request, like httpx.
- CPU: on a 2-core machine the load generator takes its CPU from the server it
  measures. A FastHttpUser probe streaming this mix from kvserve used ~0.08-0.10 cores at
  8-32 users (about 1.4x this generator per token, which reads raw bytes and counts
  token markers in them: no JSON or SSE parsing while timed).

A run has a warm-up, a measured window and a drain: users send requests until the
window ends; requests still running then are awaited (up to `drain_s`) so that their
time to first token is counted too (dropping them would leave out the slowest). Tokens/s
counts the tokens that arrived within the window; requests/s the requests that ended
within it; TTFT and latency percentiles are over the requests sent within it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

PROMPT_BYTES = (16, 256)  # uniform, inclusive
NEW_TOKENS = (16, 128)  # uniform, inclusive
SERIES_STEPS = (16, 256)  # a predict request: one noisy sine of this many steps
CHUNKED_END = b"\r\n0\r\n\r\n"  # the last chunk; the bodies measured hold no \r


# ---- the mix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """One request of the mix: its fields, and how many tokens it must stream (0 for a
    non-streamed request)."""

    fields: dict[str, Any]
    expected_tokens: int


class GenerateMix:
    """Streamed text generation: a prompt of printable ASCII, length uniform in
    PROMPT_BYTES, and max_new_tokens uniform in NEW_TOKENS (greedy, no stop token)."""

    streamed = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def user(self, index: int) -> Iterator[Work]:
        rng = random.Random(f"generate:{self.seed}:{index}")
        while True:
            prompt = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(*PROMPT_BYTES)))
            new = rng.randint(*NEW_TOKENS)
            yield Work({"prompt": prompt, "max_new_tokens": new}, new)


class PredictMix:
    """Regression: one noisy sine per request, length uniform in SERIES_STEPS (the
    sine-regressor's training distribution), as a batch of one value sequence."""

    streamed = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def user(self, index: int) -> Iterator[Work]:
        rng = random.Random(f"predict:{self.seed}:{index}")
        while True:
            steps = rng.randint(*SERIES_STEPS)
            amp, freq, phase = rng.uniform(0.5, 2.0), rng.uniform(0.0625, 0.25), rng.uniform(0, 3)
            values = [
                [round(amp * math.sin(2 * math.pi * freq * t + phase) + rng.gauss(0, 0.1), 4)]
                for t in range(steps)
            ]
            yield Work({"inputs": [values]}, 0)


# ---- one server's API ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where and how to send the mix to one server: `body` turns a Work's fields into
    this server's JSON body; `token_mark` is the bytes that begin each token in its
    streamed response (None: not streamed)."""

    name: str
    host: str
    port: int
    path: str
    body: Callable[[dict[str, Any]], dict[str, Any]]
    token_mark: bytes | None


# ---- measurements ----------------------------------------------------------------------


@dataclass
class RequestRecord:
    user: int
    sent: float  # perf_counter seconds
    expected_tokens: int
    first: float | None = None  # first token (streamed) or the whole response
    end: float | None = None
    tokens: int = 0
    status: int = 0
    error: str | None = None
    body: bytes | None = None  # kept only when asked (checks after the run)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.status == 200
            and self.end is not None
            and self.tokens == self.expected_tokens
        )


@dataclass
class Window:
    """The measured interval, and what arrived within it."""

    start: float
    end: float
    tokens: int = 0
    ended_requests: int = 0

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class LoadResult:
    users: int
    duration_s: float
    warmup_s: float
    window_tokens: int
    window_ended_requests: int
    records: list[RequestRecord] = field(default_factory=list)  # sent within the window
    drained_s: float = 0.0
    unfinished: int = 0  # still running when the drain timed out (cancelled)
    window_marks: dict[str, Any] = field(default_factory=dict)  # on_window's results

    @property
    def tokens_per_s(self) -> float:
        return self.window_tokens / self.duration_s

    @property
    def requests_per_s(self) -> float:
        return self.window_ended_requests / self.duration_s

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.records)

    def ttft_s(self) -> list[float]:
        return [r.first - r.sent for r in self.records if r.ok and r.first is not None]

    def latency_s(self) -> list[float]:
        return [r.end - r.sent for r in self.records if r.ok and r.end is not None]


# ---- clients ---------------------------------------------------------------------------


class Client(Protocol):
    """What one user sends its requests through."""

    async def send(
        self, work: Work, record: RequestRecord, window: Window, keep_body: bool
    ) -> None: ...

    def close(self) -> None: ...


# ---- HTTP/1.1 by hand ------------------------------------------------------------------


class Connection:
    """One user's kept-alive HTTP/1.1 connection; reopened when the server closed it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(
                self.target.host, self.target.port
            )
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(
        self, work: Work, record: RequestRecord, window: Window, keep_body: bool
    ) -> None:
        """One request; fills `record` (first, end, tokens, status) as bytes arrive."""
        t = self.target
        body = json.dumps(t.body(work.fields)).encode()
        request = (
            f"POST {t.path} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader, writer = await self.open()
        record.sent = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, _, header_text = head.decode("latin-1").partition("\r\n")
        record.status = int(status_line.split()[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in header_text.split("\r\n") if line)
        }
        kept: list[bytes] = []
        if "content-length" in headers:  # a whole (non-streamed) response
            data = await reader.readexactly(int(headers["content-length"]))
            record.first = record.end = time.perf_counter()
            kept.append(data)
        else:
            assert headers.get("transfer-encoding") == "chunked", headers
            await self._read_chunked(reader, record, window, kept, keep_body)
        if headers.get("connection", "").lower() == "close":
            self.close()
        if window.holds(record.end or 0.0):
            window.ended_requests += 1
        if keep_body:
            record.body = b"".join(kept)

    async def _read_chunked(
        self,
        reader: asyncio.StreamReader,
        record: RequestRecord,
        window: Window,
        kept: list[bytes],
        keep_body: bool,
    ) -> None:
        """Read a chunked body to its last chunk, counting token marks as they arrive (a
        mark may straddle two reads: the previous read's tail is searched with it)."""
        mark = self.target.token_mark or b"\x00"
        tail = b""
        while True:
            data = await reader.read(65536)
            now = time.perf_counter()
            if not data:
                raise ConnectionError("the server closed the connection mid-response")
            joined = tail + data
            count = joined.count(mark)
            if count:
                if record.first is None:
                    record.first = now
                record.tokens += count
                if window.holds(now):
                    window.tokens += count
            if keep_body:
                kept.append(data)
            if joined.endswith(CHUNKED_END):
                record.end = now
                return
            tail = joined[-max(len(mark), len(CHUNKED_END)) + 1 :]


# ---- the run ---------------------------------------------------------------------------


async def run_load(
    connect: Target | Callable[[], Client],
    mix: GenerateMix | PredictMix,
    users: int,
    duration_s: float,
    warmup_s: float = 3.0,
    drain_s: float = 60.0,
    on_window: Callable[[str], Any] | None = None,
    keep_bodies: bool = False,
) -> LoadResult:
    """`users` closed-loop users sending `mix` to a server (`connect`: a Target, or a
    function making one user's Client): warm-up, then a measured window of `duration_s`,
    then the drain. `on_window("start")` / `on_window("end")` are
    called at the window's edges (e.g. CPU snapshots); their results are kept in
    `window_marks`."""
    start = time.perf_counter()
    window = Window(start + warmup_s, start + warmup_s + duration_s)
    records: list[RequestRecord] = []
    marks: dict[str, Any] = {}

    async def user(index: int) -> None:
        connection = Connection(connect) if isinstance(connect, Target) else connect()
        works = mix.user(index)
        try:
            while time.perf_counter() < window.end:
                work = next(works)
                record = RequestRecord(index, time.perf_counter(), work.expected_tokens)
                if window.holds(record.sent):
                    records.append(record)
                try:
                    await connection.send(work, record, window, keep_bodies)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    record.error = f"{type(exc).__name__}: {exc}"
                    connection.close()
                    await asyncio.sleep(0.1)  # no hot loop on a refusing server
        finally:
            connection.close()

    async def edges() -> None:
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        marks["start"] = on_window("start") if on_window else None
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        marks["end"] = on_window("end") if on_window else None

    tasks = [asyncio.create_task(user(i)) for i in range(users)]
    await edges()
    drain_start = time.perf_counter()
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return LoadResult(
        users=users,
        duration_s=duration_s,
        warmup_s=warmup_s,
        window_tokens=window.tokens,
        window_ended_requests=window.ended_requests,
        records=records,
        drained_s=time.perf_counter() - drain_start,
        unfinished=sum(r.end is None and r.error is None for r in records),
        window_marks=marks,
    )


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP/1.1 body (what a Connection keeps: after the headers)."""
    out, pos = [], 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
