"""What `Stream` and `AsyncStream` share: a native stream's bytes turned into token events
and, at its `done` event, the whole `GenerateResult` (each stream only reads the bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clients.errors import IncompleteStream, KvserveError, error_from_event
from clients.results import Done, GenerateResult, TokenEvent
from clients.sse import ServerSentEvent, SSEDecoder


class StreamState:
    """A native stream's token events and final result, from its SSE events."""

    def __init__(self) -> None:
        self.outputs: list[Any] = []
        self.texts: list[str] | None = None  # byte-level models send text pieces
        self.done: Done | None = None
        self.result: GenerateResult | None = None
        self._decoder = SSEDecoder()

    def feed(self, chunk: bytes) -> Iterator[TokenEvent]:
        """The token events this chunk completes, one at a time (an error event raises
        only once the events before it are taken); nothing after the `done` event."""
        for sse in self._decoder.feed(chunk):
            event = self.on_event(sse)
            if event is not None:
                yield event
            if self.result is not None:
                return

    def on_event(self, sse: ServerSentEvent) -> TokenEvent | None:
        """The token event, if this is one; raises the server's error for `event: error`."""
        if sse.event == "token":
            data = self._data(sse)
            event = TokenEvent(
                data["index"], data.get("token"), data.get("value"), data.get("text")
            )
            self.outputs.append(event.token if event.token is not None else event.value)
            if event.text is not None:
                if self.texts is None:
                    self.texts = []
                self.texts.append(event.text)
            return event
        if sse.event == "done":
            done = self.done = Done.from_json(self._data(sse))
            text = None if self.texts is None else "".join(self.texts)
            self.result = GenerateResult(
                done.id or "", done.model or "", self.outputs, text, done.finish_reason,
                done.usage, done.speculative, done.session_id,
            )  # fmt: skip
        elif sse.event == "error":
            raise error_from_event(self._data(sse))
        return None  # events this client does not know are skipped

    @staticmethod
    def _data(sse: ServerSentEvent) -> Any:
        try:
            return sse.json()
        except ValueError as exc:
            raise KvserveError(
                None,
                "invalid_event",
                f"a {sse.event!r} event's data is not JSON: {sse.data[:200]!r}",
            ) from exc

    def final_result(self) -> GenerateResult:
        """The whole result; `IncompleteStream` if the stream was closed before `done`."""
        if self.result is None:
            raise self.incomplete("the stream was closed")
        return self.result

    def incomplete(self, cause: str = "the stream ended") -> IncompleteStream:
        return IncompleteStream(
            None,
            "incomplete_stream",
            f"{cause} after {len(self.outputs)} token event(s) without a done event",
        )
