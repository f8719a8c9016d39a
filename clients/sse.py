"""Server-Sent Events: the decoder that turns a streamed response's bytes into events."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Server-Sent Events from a byte stream cut anywhere, by the WHATWG rules: lines end
    with CRLF, LF or CR; a line starting with `:` is a comment; `data:` lines of one event
    join with "\\n"; `event:`, `id:` (kept for later events) and `retry:` fields; a blank
    line ends an event; an unfinished event at the end of the stream is dropped.

        decoder = SSEDecoder()
        events = decoder.feed(b'event: token\\ndata: {"index": 0}\\n\\n')
        assert events[0].event == "token" and events[0].json() == {"index": 0}
    """

    _LINE_END = re.compile(r"\r\n|\r|\n")

    def __init__(self) -> None:
        # A chunk may end inside a UTF-8 character; "-sig" drops a leading BOM.
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._line_start = ""  # text after the last line end
        self._after_cr = False  # the last chunk ended with CR: a LF next completes a CRLF
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes | str) -> list[ServerSentEvent]:
        """The events this chunk completes."""
        text = self._utf8.decode(chunk) if isinstance(chunk, bytes) else chunk
        if not text:
            return []
        if self._after_cr and text[0] == "\n":
            text = text[1:]
        buffer = self._line_start + text
        events: list[ServerSentEvent] = []
        start = 0
        for end in self._LINE_END.finditer(buffer):
            self._line(buffer[start : end.start()], events)
            start = end.end()
        self._after_cr = start == len(buffer) and buffer.endswith("\r")
        self._line_start = buffer[start:]
        return events

    def _line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:  # the end of an event (one without data lines is no event)
            if self._data:
                data = "\n".join(self._data)
                events.append(
                    ServerSentEvent(self._event or "message", data, self._id, self._retry)
                )
            self._event, self._data = "", []
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
