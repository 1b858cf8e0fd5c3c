"""The load generator's Streamable HTTP client: a minimal HTTP/1.1 client on
an asyncio ``Protocol``, one keep-alive connection per simulated client.

``connect`` opens the connection, POSTs ``initialize`` (no session header;
the answer may be JSON or SSE) and ``notifications/initialized`` (202), then
sends ``Mcp-Session-Id`` (when the server gave one) and
``MCP-Protocol-Version`` with every request. In the call loop one request is
in flight at a time (HTTP/1.1 without pipelining); every response is read
whole (``Content-Length`` or chunked), and while recording it is parsed: a
JSON body, or an SSE stream whose events are counted (priming events, that
is an id and empty data; progress notifications; the answer). A wrong
status, a missing answer, a wrong echo or a progress count other than the
tool's is an error. ``bench/loadgen.py`` drives it for ``http://`` URLs.

It is written by hand because it must cost little: it parses only what it
checks and keeps nothing per request but a start time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from loadgen import CallStats

Response = tuple[int, dict[bytes, bytes], bytes]


def is_sse(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-type", b"").startswith(b"text/event-stream")


def messages(headers: dict[bytes, bytes], body: bytes) -> tuple[list[bytes], int]:
    """The JSON-RPC messages of a response body, and its priming events."""
    if not is_sse(headers):
        return [body], 0
    found, priming = [], 0
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if not data:
            continue  # a comment (keep-alive) or nothing
        if data == [b""]:
            priming += 1
        else:
            found.append(b"\n".join(data))
    return found, priming


class HTTPConnection(asyncio.Protocol):
    """One client: setup requests await their response; in the call loop
    every response is checked, timed and followed by the next request."""

    def __init__(self, host: str, path: str, version: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.disconnected = False
        self.drained: asyncio.Future[None] | None = None
        self.version = version
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Accept: application/json, text/event-stream\r\n").encode()
        self._waiter: asyncio.Future[Response] | None = None
        self._on_response: Callable[[int, dict[bytes, bytes], bytes], None] = self._to_waiter
        # The response being read.
        self._buffer = bytearray()
        self._status = 0  # 0: reading the head
        self._headers: dict[bytes, bytes] = {}
        self._chunked = False
        self._size = -1  # bytes of body (or of the current chunk) still to come; -1: a chunk size line
        self._chunks: list[bytes] = []
        # The call loop.
        self._stats: CallStats | None = None
        self._next_id = 1
        self._started = 0

    # -- asyncio callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.disconnected = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("disconnected"))
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while buffer:
            if not self._status and not self._read_head():
                return
            if not self._chunked:
                if len(buffer) < self._size:
                    return
                body = bytes(buffer[:self._size])
                del buffer[:self._size]
                self._complete(body)
                continue
            if self._size < 0:  # a chunk size line, or the end
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(buffer[:end].split(b";")[0], 16)
                if size == 0:
                    trailer = buffer.find(b"\r\n\r\n", end)
                    if trailer < 0:
                        return
                    del buffer[:trailer + 4]
                    self._complete(b"".join(self._chunks))
                    continue
                del buffer[:end + 2]
                self._size = size
            if len(buffer) < self._size + 2:
                return
            self._chunks.append(bytes(buffer[:self._size]))
            del buffer[:self._size + 2]
            self._size = -1

    def _read_head(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        status_line, *lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[:end + 4]
        self._status = int(status_line.split(b" ", 2)[1])
        headers = self._headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self._chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        if self._chunked:
            self._size = -1
            self._chunks = []
        elif b"content-length" in headers:
            self._size = int(headers[b"content-length"])
        else:
            raise RuntimeError("a response without Content-Length or chunked encoding")
        return True

    def _complete(self, body: bytes) -> None:
        status, headers = self._status, self._headers
        self._status = 0
        self._on_response(status, headers, body)

    # -- setup: one request at a time -------------------------------------------

    def _send(self, body: bytes) -> None:
        self.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body))  # type: ignore[union-attr]

    def _to_waiter(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, headers, body))

    async def post(self, body: bytes, timeout: float) -> Response:
        self._waiter = asyncio.get_running_loop().create_future()
        self._send(body)
        try:
            return await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None

    async def initialize(self, initialize: bytes, initialized: bytes, timeout: float) -> None:
        status, headers, body = await self.post(initialize, timeout)
        found, _ = messages(headers, body)
        answer = orjson.loads(found[-1]) if status == 200 and found else {}
        if "result" not in answer:
            raise RuntimeError(f"initialize failed: HTTP {status} {body[:300]!r}")
        session = headers.get(b"mcp-session-id")
        if session is not None:
            self._head += b"Mcp-Session-Id: %s\r\n" % session
        self._head += b"MCP-Protocol-Version: %s\r\n" % self.version.encode()
        status, _, body = await self.post(initialized, timeout)
        if status != 202:
            raise RuntimeError(f"notifications/initialized: HTTP {status} {body[:300]!r}")

    # -- the call loop ----------------------------------------------------------

    def start_calls(self, stats: CallStats, inflight: int) -> None:
        if inflight != 1:
            raise ValueError("HTTP/1.1: one call in flight per connection")
        self._stats = stats
        self.drained = asyncio.get_running_loop().create_future()
        self._on_response = self._on_answer
        self._send_call()

    def _send_call(self) -> None:
        request_id = self._next_id
        self._next_id = request_id + 1
        self._started = time.perf_counter_ns()
        self._send(self._stats.request(request_id))  # type: ignore[union-attr]

    def _on_answer(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        now = time.perf_counter_ns()
        stats = self._stats
        assert stats is not None
        if stats.recording:
            stats.completed += 1
            stats.latencies_ns.append(now - self._started)
            stats.response_bytes += len(body)
            if not self._check(stats, status, headers, body):
                stats.errors += 1
                if stats.first_error is None:
                    stats.first_error = f"HTTP {status} {body[:300]!r}"
        if not stats.stopping:
            self._send_call()
        elif not self.drained.done():  # type: ignore[union-attr]
            self.drained.set_result(None)  # type: ignore[union-attr]

    def _check(self, stats: CallStats, status: int, headers: dict[bytes, bytes], body: bytes) -> bool:
        if status != 200:
            return False
        found, priming = messages(headers, body)
        if is_sse(headers):
            stats.events += priming + len(found)
            stats.priming += priming
        progress, answer = 0, None
        for data in found:
            message: dict[str, Any] = orjson.loads(data)
            if message.get("method") == "notifications/progress":
                progress += 1
            elif message.get("id") == self._next_id - 1:
                answer = message
        stats.progress += progress
        result = answer.get("result") if answer is not None else None
        return (result is not None and not result.get("isError") and progress == stats.progress_per_call
                and result["content"][0]["text"] == stats.text)

    async def close(self, timeout: float = 5.0) -> None:
        if self.transport is not None and not self.disconnected:
            self.transport.close()


async def connect(url: str, initialize: bytes, initialized: bytes, version: str,
                  timeout: float) -> HTTPConnection:
    """An initialised connection to an ``http://`` MCP endpoint."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"not an http:// URL: {url}")
    port = parts.port or 80
    loop = asyncio.get_running_loop()
    _, connection = await asyncio.wait_for(loop.create_connection(
        lambda: HTTPConnection(parts.netloc, parts.path or "/", version), parts.hostname, port), timeout)
    await connection.initialize(initialize, initialized, timeout)
    return connection
