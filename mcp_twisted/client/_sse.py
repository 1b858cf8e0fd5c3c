"""Server-sent events, parsed without I/O: feed bytes, get events.

Streamable HTTP answers a request (and the standalone GET) with an SSE
stream. The parser follows the WHATWG rules that matter to MCP: ``data``
lines joined with newlines, ``id`` remembered for ``Last-Event-ID``,
``retry`` remembered for the reconnection delay, comments (keep-alives)
and unknown fields ignored, any of CR, LF and CRLF ending a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser", "StreamTooLarge"]

_LINE_END = re.compile(rb"\r\n|\r|\n")


class StreamTooLarge(ValueError):
    """An unfinished line or event grew past the parser's limit."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    id: str | None = None  # the stream's last event id when this event was dispatched
    event: str = "message"


class SSEParser:
    """One stream's parser. ``last_event_id`` and ``retry`` (milliseconds,
    or None) carry over events, as a browser's ``EventSource`` keeps them."""

    def __init__(self, max_event_size: int = 16 * 1024 * 1024) -> None:
        self.max_event_size = max_event_size
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self._buffer = bytearray()
        self._scanned = 0  # the start of the buffer already known to hold no line end
        self._data: list[str] = []
        self._size = 0
        self._type = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that ``chunk`` completes, in order."""
        buffer = self._buffer
        buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        scan = self._scanned  # go on where the last chunk left off: each byte is looked at once
        while True:
            match = _LINE_END.search(buffer, scan)
            if match is None:
                scan = len(buffer)
                break
            if match.group() == b"\r" and match.end() == len(buffer):
                scan = match.start()  # maybe the first half of a CRLF split across chunks
                break
            event = self._line(buffer[start:match.start()].decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
            start = scan = match.end()
        del buffer[:start]
        self._scanned = scan - start
        if len(buffer) + self._size > self.max_event_size:
            raise StreamTooLarge(f"SSE event over {self.max_event_size} bytes")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
            self._size += len(value) + 1
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        elif name == "event":
            self._type = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, kind = self._data, self._type or "message"
        self._data, self._size, self._type = [], 0, ""
        if not data:
            return None
        return SSEEvent("\n".join(data), self.last_event_id, kind)
