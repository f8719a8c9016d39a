"""POST /v1/completions: OpenAI-compatible text completions (byte-level models).

Each choice (prompt i, sample j; index i * n + j) is one engine request; all are
submitted at once and their events merged in arrival order. Stop strings are matched on
the decoded text after every token: the text is cut before the first one, its engine
request cancelled, and while streaming a tail that could still begin a stop string is
held back, so no part of a stop string ever reaches the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from model_core.tokenizer import StreamDecoder
from server.catalog import ServedModel, find_model
from server.engine.engine import RequestStream, new_request_id
from server.engine.protocol import Event, Sampling, WorkRequest
from server.errors import ApiError
from server.inputs import BYTES, check_items, invalid
from server.metrics import StreamTimer
from server.openai_schemas import CompletionRequest, CompletionResponse
from server.openapi_doc import COMPLETION_STREAM, errors
from server.outcomes import error_from_event, submit
from server.routes import deps
from server.settings import ServerSettings
from server.sse import sse, sse_response

router = APIRouter(tags=["openai"])
DONE = "data: [DONE]\n\n"


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**errors(404, 409, 422, 429, 503, 504), **COMPLETION_STREAM},
    summary="OpenAI-compatible text completions (byte-level token models)",
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    check_supported(body)
    served = find_model(deps.catalog(request), body.model, "autoregressive")
    if not served.byte_level:
        raise ApiError(
            409,
            "wrong_model_kind",
            f"{served.name!r} is not a byte-level text model; completions need one "
            "(use POST /v1/generate with token ids or values)",
            "model",
        )
    prompts = prompt_ids(served, body)
    check_limits(served, body, prompts, deps.settings(request))
    choices = start_choices(request, served, body, prompts)
    head = {
        "id": "cmpl-" + uuid.uuid4().hex,
        "object": "text_completion",
        "created": int(time.time()),
        "model": served.name,
    }
    echoes = [BYTES.decode(p) if body.echo else "" for p in prompts]
    prompt_tokens = sum(len(p) for p in prompts)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = stream_chunks(choices, head, echoes, prompt_tokens, include_usage)
        return sse_response(chunks)
    await run_to_end(choices)
    return JSONResponse(
        {
            **head,
            "choices": [
                choice_body(c.index, echoes[c.prompt_index] + c.text.text, c.finish_reason)
                for c in choices
            ],
            "usage": usage(prompt_tokens, choices),
        }
    )


# Request checks.
def check_supported(body: CompletionRequest) -> None:
    """422 for OpenAI options kvserve does not implement (their neutral values pass)."""
    if body.logprobs is not None:
        raise invalid("logprobs", "log probabilities are not supported; send null")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0):
            raise invalid(name, "penalties are not supported; send 0 or leave it out")
    if body.best_of is not None and body.best_of != body.n:
        raise invalid("best_of", "only best_of equal to n (or null) is supported")
    if body.suffix:
        raise invalid("suffix", "insertion (suffix) is not supported; send null")
    if body.logit_bias:
        raise invalid("logit_bias", "logit_bias is not supported; send null or {}")
    if body.stream_options is not None and not body.stream:
        raise invalid("stream_options", "only allowed when stream is true")


def prompt_ids(served: ServedModel, body: CompletionRequest) -> list[list[int]]:
    """The prompts as token ids: text is UTF-8 bytes, ids are taken as they are."""
    items = body.prompt
    if not items:
        raise invalid("prompt", "the list of prompts is empty")
    prompts = []
    for i, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt.{i}"
        try:
            ids = BYTES.encode(item) if isinstance(item, str) else list(item)
        except UnicodeEncodeError as exc:
            raise invalid(param, f"not valid Unicode text ({exc.reason})") from exc
        if not ids:
            raise invalid(param, "the prompt is empty")
        check_items(served, ids, param)
        prompts.append(ids)
    return prompts


def check_limits(
    served: ServedModel, body: CompletionRequest, prompts: list[list[int]], settings: ServerSettings
) -> None:
    if body.max_tokens > settings.max_new_tokens:
        raise invalid(
            "max_tokens", f"{body.max_tokens} is over the limit of {settings.max_new_tokens}"
        )
    longest = max(len(p) for p in prompts)
    max_seq_len = served.config.max_seq_len
    if longest + body.max_tokens > max_seq_len:
        raise invalid(
            "max_tokens",
            f"prompt ({longest} tokens) + max_tokens ({body.max_tokens}) is over the model's "
            f"max_seq_len ({max_seq_len}); shorten one of them",
        )
    total = body.n * len(prompts)
    if total > settings.max_batch_size:
        raise invalid(
            "n",
            f"n x prompts = {total} completions is over the limit of {settings.max_batch_size}",
        )


# Choices.
class StopText:
    """A choice's generated text, cut before the first stop string found in it."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.decoder = StreamDecoder()
        self.text = ""
        self.stopped = False
        self.sent = 0  # characters of `text` already streamed

    def feed(self, token: int) -> bool:
        """Add a token's text; True when a stop string has ended the text."""
        self._append(self.decoder.feed(token))
        return self.stopped

    def finish(self) -> None:
        self._append(self.decoder.flush())

    def _append(self, piece: str) -> None:
        if not piece or self.stopped:
            return
        before = len(self.text)
        self.text += piece
        found = [
            i for s in self.stops if (i := self.text.find(s, max(0, before - len(s) + 1))) >= 0
        ]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def release(self, final: bool) -> str:
        """Text not streamed yet, less (unless final) a tail that may begin a stop string."""
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held()
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def _held(self) -> int:
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held


class Choice:
    """One engine request of the completion, its text and its metrics."""

    def __init__(
        self,
        index: int,
        prompt_index: int,
        prompt: list[int],
        stream: RequestStream,
        timer: StreamTimer,
        stops: list[str],
    ) -> None:
        self.index = index
        self.prompt_index = prompt_index
        self.prompt_tokens = len(prompt)
        self.stream = stream
        self.timer = timer
        self.text = StopText(stops)
        self.tokens = 0
        self.finish_reason: str | None = None

    def apply(self, event: Event) -> bool:
        """Take one engine event; True when it changed the choice. An error event
        raises the API's error."""
        if self.finish_reason is not None:
            return False  # e.g. the `cancelled` end after a stop string
        kind = event[0]
        if kind == "token":
            self.timer.on_output()
            self.tokens += 1
            if self.text.feed(event[3]):
                self.stream.cancel()
                self._end("stop", None)
            return True
        if kind == "done":
            self.text.finish()
            self._end("stop" if self.text.stopped else event[2], event[3])
            return True
        if kind == "error":
            self.finish_reason = "error"
            self.timer.on_end(None, event[2], None)
            raise error_from_event(event)
        if kind == "admitted":
            self.timer.metrics.observe_queue_time(self.timer.model, event[2])
        return False

    def _end(self, reason: str, engine_usage: dict[str, int] | None) -> None:
        self.finish_reason = reason
        counts = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.tokens}
        self.timer.on_end(reason, None, engine_usage or counts)

    def abandon(self, why: str) -> None:
        """Cancel the engine request if it is still running."""
        if self.finish_reason is None:
            self.finish_reason = why
            self.stream.cancel()
            self.timer.on_end(None, why, None)


def start_choices(
    request: Request, served: ServedModel, body: CompletionRequest, prompts: list[list[int]]
) -> list[Choice]:
    """Submit every choice's engine request; on a refusal (429 / 503) cancel the ones
    already submitted."""
    stops = [s for s in body.stop or [] if s]
    eos = served.default_stop()
    top_p = body.top_p if body.top_p < 1.0 else None
    choices: list[Choice] = []
    try:
        for i, prompt in enumerate(prompts):
            for j in range(body.n):
                sampling = Sampling(body.temperature, None, top_p, choice_seed(body.seed, j))
                req = WorkRequest(
                    new_request_id(), "generate", served.name, prompt, body.max_tokens,
                    sampling, stop=eos,
                )  # fmt: skip
                stream = submit(deps.engine(request), req)
                timer = deps.timer(request, served.name)
                choices.append(Choice(len(choices), i, prompt, stream, timer, stops))
    except BaseException:
        for choice in choices:
            choice.abandon("cancelled")
        raise
    return choices


def choice_seed(seed: int | None, sample: int) -> int | None:
    """The seed of sample `sample` of a prompt: the request's for the first (as
    /v1/generate with that seed), a different one derived from it for the others."""
    if seed is None:
        return None
    if sample == 0:
        return seed % 2**63
    digest = hashlib.blake2b(f"{seed}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) % 2**63


class MergedEvents:
    """Every choice's engine events in arrival order, a batch of all queued at a time."""

    def __init__(self, choices: list[Choice]) -> None:
        self.queue: asyncio.Queue[tuple[Choice, Event]] = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._pump(c)) for c in choices]

    async def _pump(self, choice: Choice) -> None:
        async for event in choice.stream:
            self.queue.put_nowait((choice, event))

    async def next_batch(self) -> list[tuple[Choice, Event]]:
        batch = [await self.queue.get()]
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


async def run_to_end(choices: list[Choice]) -> None:
    events = MergedEvents(choices)
    why = "gone"  # the client went away unless a choice failed
    try:
        while any(c.finish_reason is None for c in choices):
            for choice, event in await events.next_batch():
                try:
                    choice.apply(event)
                except ApiError:
                    why = "cancelled"
                    raise
    finally:
        events.close()
        for choice in choices:
            choice.abandon(why)


# Answers.
def choice_body(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(c.tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


async def stream_chunks(
    choices: list[Choice],
    head: dict[str, Any],
    echoes: list[str],
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """`data: {chunk}` per piece of text of a choice (all queued events in one write),
    each choice's last with its finish_reason, then [DONE]. A client that goes away
    cancels every engine request still running."""
    if include_usage:
        head = {**head, "usage": None}  # as OpenAI: null on all chunks but the last

    def chunk(choice: Choice, text: str) -> str:
        body = choice_body(choice.index, text, choice.finish_reason)
        return sse(None, {**head, "choices": [body]})

    events = MergedEvents(choices)
    why = "gone"
    try:
        first = [chunk(c, echoes[c.prompt_index]) for c in choices if echoes[c.prompt_index]]
        if first:
            yield "".join(first).encode()
        while any(c.finish_reason is None for c in choices):
            batch = await events.next_batch()
            changed: dict[int, Choice] = {}
            for choice, event in batch:
                try:
                    if choice.apply(event):
                        changed[choice.index] = choice
                except ApiError as error:
                    why = "cancelled"
                    yield (sse(None, error.body()) + DONE).encode()
                    return
            parts = []
            for choice in changed.values():
                text = choice.text.release(final=choice.finish_reason is not None)
                if text or choice.finish_reason is not None:
                    parts.append(chunk(choice, text))
            if parts:
                yield "".join(parts).encode()
        tail = DONE
        if include_usage:
            tail = sse(None, {**head, "choices": [], "usage": usage(prompt_tokens, choices)}) + DONE
        yield tail.encode()
    finally:
        events.close()
        for choice in choices:
            choice.abandon(why)
