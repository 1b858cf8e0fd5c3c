"""The Streamable HTTP transport (MCP 2025-03-26 to 2025-11-25) on twisted.web.

One URL serves it: ``POST`` carries one JSON-RPC message (or a 2025-03-26
batch), ``GET`` opens the session's stream of unsolicited messages,
``DELETE`` ends the session. ``MCPHTTPResource`` is a leaf ``IResource``;
``MCPSite`` puts it and the WebSocket transport on the same path.

The way of a request::

    POST -> admission (hosting) -> MCP-Session-Id -> Session.receive
         -> handler -> send(data, related, answer) -> HTTPSession.route
         -> the POST's JSON body, or its SSE stream from the first message
            that is not the answer on; messages no request owns -> GET stream

Every SSE event gets an id and is kept in a bounded per-session store, so a
client whose stream dropped replays what it missed with ``Last-Event-ID``;
a dropped stream does not cancel the handler (``notifications/cancelled``
does).
"""

from __future__ import annotations

import functools
import inspect
import io
import re
import resource
import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from mcp_twisted import jsonrpc
from mcp_twisted._lograte import RepeatedEventLog
from mcp_twisted.eras import MODERN_VERSIONS, classify, http_status
from mcp_twisted.hosting import (
    AdmissionRequest,
    Refusal,
    SessionHost,
    StallLimit,
    WriteWaiters,
    listener_is_loopback,
    unsent_bytes,
)
from mcp_twisted.jsonrpc import INVALID_REQUEST, MessageError, Notification, Request, RequestId, RPCError
from mcp_twisted.protocol import (
    BATCHING_VERSIONS,
    SUPPORTED_PROTOCOL_VERSIONS,
    Method,
    Notify,
    version_at_least,
)
from mcp_twisted.proxy import TrustedProxies
from mcp_twisted.session import Session
from mcp_twisted.stateless_http import serve_stateless

if TYPE_CHECKING:
    from autobahn.twisted.resource import WebSocketResource

__all__ = [
    "EventStore",
    "HTTPSettings",
    "MCPHTTPResource",
    "MCPSite",
    "ReplayBudget",
]

log = Logger()

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
# Priming events (an id and empty data, so the client has something to
# resume from at once) came with 2025-11-25; older clients may choke on them.
PRIMING_SINCE = "2025-11-25"
STANDALONE = "0"  # the stream id of the GET stream
SERVER_NAME = b"mcp-twisted"  # the Server header, not Twisted's name and version
# What ends the POST of a request its client cancelled (LSP's RequestCancelled).
REQUEST_CANCELLED = -32800


# -- twisted.web's header store, used directly on the hot path -----------------
#
# Each Request.setHeader encodes and canonicalises the name and sanitises the
# value, and each getRawHeaders encodes the name again: about six times a
# request for names and values this module makes itself (constants, session
# ids, lengths). Headers keeps every name under one key, whatever its case
# (Header-Case in recent Twisted releases, lower case in old ones): that key is
# learnt once per name from Headers itself, and the dict is used directly if
# setting a header through the API and storing it under that key leave the
# same state. Anything a client sent (an Origin echoed back, a refusal's
# headers) still goes through setHeader.

def _header_key(name: bytes) -> bytes | None:
    """The key ``Headers`` stores ``name`` under in any case, or None if it
    stores them otherwise than as one key holding the list of values."""
    keys: set[bytes] = set()
    for variant in (name.lower(), name.upper(), name.title()):
        for add in (False, True):
            headers = Headers()
            if add:
                headers.addRawHeader(variant, b"v")
            else:
                headers.setRawHeaders(variant, [b"v"])
            raw = getattr(headers, "_rawHeaders", None)
            if type(raw) is not dict or len(raw) != 1 or list(raw.values()) != [[b"v"]]:
                return None
            keys.update(raw)
    return keys.pop() if len(keys) == 1 else None


_NAMES = (b"accept", b"access-control-request-headers", b"authorization", b"cache-control", b"content-length",
          b"content-type", b"date", b"host", b"last-event-id", b"mcp-protocol-version", b"mcp-session-id",
          b"origin", b"server", b"x-accel-buffering")
_KEYS = {name: _header_key(name) for name in _NAMES}
_RAW = None not in _KEYS.values()  # else: Headers' API, and _Head by lower-case names
if not _RAW:
    _KEYS = {name: name for name in _NAMES}
_ACCEPT, _AC_REQUEST_HEADERS, _AUTHORIZATION, _CACHE_CONTROL, _CONTENT_LENGTH, _CONTENT_TYPE, _DATE, _HOST, \
    _LAST_EVENT_ID, _VERSION, _SESSION, _ORIGIN, _SERVER, _X_ACCEL_BUFFERING = (
        cast(bytes, _KEYS[name]) for name in _NAMES)


def _put(request: server.Request, key: bytes, value: bytes) -> None:
    """``request.setHeader`` for a name of ``_NAMES`` (by its key) and a value
    made here, which needs no sanitising (no line breaks)."""
    if _RAW:
        request.responseHeaders._rawHeaders[key] = [value]
    else:
        request.setHeader(key, value)


class _Date:
    """The Date header, made once a second (as ``http.datetimeToString()``,
    whose time.gmtime and formatting cost more than the rest of a header)."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.value = http.datetimeToString(second)
            cls.second = second
        return cls.value


@dataclass
class HTTPSettings:
    """Streamable HTTP limits and timers (see docs/operations.md)."""

    session_idle_timeout: float = 1800.0  # seconds with no request and no open stream
    keepalive_interval: float = 15.0  # seconds between SSE comment lines (0: none)
    retry_ms: int = 1000  # the SSE ``retry:`` a client waits before reconnecting
    max_events: int = 1000  # events kept per session for Last-Event-ID replay
    max_event_bytes: int = 8 * 1024 * 1024  # bytes kept per session for replay
    max_replay_total: int = 64 * 1024 * 1024  # bytes kept for replay by all sessions together
    event_ttl: float = 300.0  # seconds an event is kept for replay
    max_output_buffer: int = 4 * 1024 * 1024  # unread bytes per stream before it counts as stalled
    output_stall_timeout: float = 30.0  # seconds a stream may stay stalled before it is dropped
    # Answer every request on an SSE stream that starts with a priming event,
    # so any answer can be resumed after a dropped connection (the official
    # SDK's default). Off: JSON, unless the handler sent something first.
    always_stream: bool = False
    # Proxies whose X-Forwarded-For names the client in logs (as for WebSocket).
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)


class ReplayBudget:
    """Bytes of replay events kept by every session of one resource together:
    the per-session limit times the session cap would be far too much."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def over(self) -> bool:
        return self.used > self.limit


class EventStore:
    """A session's recent SSE events, bounded by count, bytes and age.

    Ids are ``"<stream>.<sequence>"``: the stream can be told from the id
    alone, and the sequence orders events across the session. Events older
    than ``ttl`` go on a timer, so a session that has gone quiet does not
    hold them until it expires.
    """

    def __init__(
        self, clock: IReactorTime, max_events: int, max_bytes: int, ttl: float,
        budget: ReplayBudget | None = None,
    ) -> None:
        """``budget``, shared by the stores of one resource, bounds them all
        together: a store that finds it spent gives up its own oldest events."""
        self.clock = clock
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.budget = budget if budget is not None else ReplayBudget(max_bytes)
        self._events: deque[tuple[int, str, bytes, float]] = deque()
        self._bytes = 0
        self._sequence = 0
        self._dropped_upto = 0  # the newest event given up to a limit
        self._aging: IDelayedCall | None = None

    def add(self, stream: str, data: bytes) -> str:
        """Keep an event; returns its id."""
        self._sequence = sequence = self._sequence + 1
        now = self.clock.seconds()
        size = len(data)
        events = self._events
        events.append((sequence, stream, data, now))
        self._bytes += size
        budget = self.budget
        budget.used += size
        if len(events) > self.max_events:
            # A full store, the steady state of a busy session: one in, one out.
            self._drop_oldest()
        # Over a size limit, or no aging timer yet: trim. The age limit is
        # otherwise the timer's (_aged), and a replay trims first (after).
        if self._aging is None or self._bytes > self.max_bytes or budget.used > budget.limit:
            self._trim(now)
        return f"{stream}.{sequence}"

    def reserve(self, stream: str) -> str:
        """An id for an event that is not kept (a priming event: replaying it
        would tell the client nothing), in the same sequence as the rest."""
        self._sequence += 1
        return f"{stream}.{self._sequence}"

    def _trim(self, now: float | None = None) -> None:
        events = self._events
        if now is None:
            now = self.clock.seconds()
        budget = self.budget
        while events and (len(events) > self.max_events or self._bytes > self.max_bytes
                          or events[0][3] <= now - self.ttl or budget.used > budget.limit):
            self._drop_oldest()
        if events and self._aging is None and self.ttl:
            self._aging = self.clock.callLater(events[0][3] + self.ttl - now, self._aged)

    def _drop_oldest(self) -> None:
        sequence, _, data, _ = self._events.popleft()
        self._dropped_upto = sequence
        size = len(data)
        self._bytes -= size
        self.budget.used -= size

    def _aged(self) -> None:
        self._aging = None
        self._trim()

    def close(self) -> None:
        """Forget every event (the session ended)."""
        if self._aging is not None and self._aging.active():
            self._aging.cancel()
        self._aging = None
        self._events.clear()
        self.budget.used -= self._bytes
        self._bytes = 0

    def gap_after(self, event_id: str) -> bool:
        """Whether events after ``event_id`` may have been given up (to the
        count, size or age limits) before a client came back for them."""
        parsed = _parse_event_id(event_id)
        return parsed is not None and parsed[1] < self._dropped_upto

    def after(self, event_id: str) -> tuple[str, list[tuple[str, bytes]]] | None:
        """The stream an event id names and the kept events after it on that
        stream, or None for an id this store never gave."""
        parsed = _parse_event_id(event_id)
        if parsed is None or parsed[1] > self._sequence:
            return None
        self._trim()
        stream, sequence = parsed
        return stream, [(f"{s}.{n}", data) for n, s, data, _ in self._events if s == stream and n > sequence]


# An event id as EventStore gives them: a stream, a dot, a sequence number in
# ASCII digits (str.isdigit takes "²", which int() refuses) and of no more
# digits than a session could count to (int() refuses thousands).
_EVENT_ID = re.compile(r"(.+)\.([0-9]{1,18})")


def _parse_event_id(event_id: str) -> tuple[str, int] | None:
    """The stream and sequence number of an event id, or None for what no store gives."""
    found = _EVENT_ID.fullmatch(event_id)
    return (found[1], int(found[2])) if found is not None else None


def _sse_head(request: server.Request, session_id: bytes) -> None:
    _put(request, _CONTENT_TYPE, b"text/event-stream")
    _put(request, _CACHE_CONTROL, b"no-cache, no-transform")
    _put(request, _X_ACCEL_BUFFERING, b"no")  # nginx: do not buffer the stream
    _put(request, _SESSION, session_id)


def _event(event_id: str, data: bytes, retry_ms: int | None = None) -> bytes:
    """One SSE event; orjson output holds no newline, so ``data`` is one line."""
    if retry_ms is None:
        return b"id: %s\ndata: %s\n\n" % (event_id.encode(), data)
    return b"id: %s\nretry: %d\ndata: %s\n\n" % (event_id.encode(), retry_ms, data)


@implementer(IPushProducer)
class SSEStream:
    """One open ``text/event-stream`` response, with keep-alives, write
    flow control and a stall limit."""

    def __init__(self, request: server.Request, http_session: HTTPSession) -> None:
        self.request = request
        self.http_session = http_session
        self.open = True
        self.paused = False
        settings = http_session.resource.settings
        self._stall = StallLimit(http_session.resource.host.clock, settings.max_output_buffer,
                                 settings.output_stall_timeout, self.buffered, self._drop)
        _sse_head(request, http_session.id_header)
        request.registerProducer(self, True)
        request.write(b"")  # the head now: a stream with nothing to say yet is still open
        self._keepalive: LoopingCall | None = None
        if not getattr(request, "_rendering", False):
            self.keep_alive()  # else render() does, if the stream outlives it
        request.notifyFinish().addBoth(self._gone)

    def keep_alive(self) -> None:
        """Start the keep-alive comments (once)."""
        interval = self.http_session.resource.settings.keepalive_interval
        if self.open and interval and self._keepalive is None:
            self._keepalive = LoopingCall(self.write, b": keep-alive\n\n")
            self._keepalive.clock = self.http_session.resource.host.clock
            self._keepalive.start(interval, now=False)

    def send(self, event_id: str, data: bytes) -> None:
        self.write(_event(event_id, data))

    def write(self, data: bytes) -> None:
        """Write an encoded event (or comment), watching the client keep up."""
        if self.open:
            self.request.write(data)
            if self.paused:
                self._stall.wrote()

    def finish(self) -> None:
        """End the response (the client has every event)."""
        if self.open:
            self.open = False
            self._stop()
            self.request.unregisterProducer()
            self.request.finish()

    def buffered(self) -> int:
        return unsent_bytes(self.request.channel)

    # IPushProducer: the channel's write buffer passed its high-water mark.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._stall.stop()
        self.http_session.stream_writable()

    def stopProducing(self) -> None:
        self.open = False

    def _drop(self) -> None:
        """The client stayed over the output limit for the whole stall timeout."""
        if not self.open:
            return
        log.info("Dropping an SSE stream of session {session}: its client stopped reading",
                 session=self.http_session.id[:8])
        metrics = self.http_session.resource.host.metrics
        if metrics is not None:
            metrics.output_stalls.inc()
        transport = cast(ITCPTransport, self.request.channel.transport)  # TCP or TLS over TCP
        transport.abortConnection()

    def _gone(self, _: object) -> None:
        self.open = False
        self._stop()
        self.http_session.stream_closed(self)

    def _stop(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._stall.stop()


# What an exchange buffers inside render() before its stream opens for real.
_MOST_PENDING_EVENTS, _MOST_PENDING_BYTES = 16, 16 * 1024


class Exchange:
    """A POST request and the messages that belong to it, until its answer.

    ``stream`` is set once the answer became an SSE stream; ``request`` is
    None once its client left (messages then only go to the event store).
    """

    __slots__ = (
        "batch", "cancelled", "ids", "json_only", "pending", "request", "sse", "stream_id", "sync_body",
    )

    def __init__(
        self, request: server.Request, ids: Iterable[RequestId], stream_id: str, batch: bool
    ) -> None:
        self.request: server.Request | None = request
        self.ids = set(ids)
        self.batch = batch  # answered with an array
        self.cancelled: set[RequestId] = set()
        self.stream_id = stream_id
        self.sse: SSEStream | None = None
        self.sync_body: bytes | None = None  # an answer ready before render() returned
        # Events of a stream begun inside render(): written as one body if the
        # answer comes before render() returns, else they open the stream.
        self.pending: list[bytes] | None = None
        self.json_only = False  # initialize: its answer carries the new session's id


class HTTPSession:
    """One MCP session over HTTP: its ``Session``, its exchanges, its GET
    stream, its event store and its idle timer."""

    def __init__(self, resource: MCPHTTPResource, identity: Any, peer: str) -> None:
        self.resource = resource
        self.id = secrets.token_hex(16)  # 128 random bits, visible ASCII
        self.id_header = self.id.encode()
        self.identity = identity
        settings = resource.settings
        clock = resource.host.clock
        self.events = EventStore(clock, settings.max_events, settings.max_event_bytes, settings.event_ttl,
                                 resource.replay_budget)
        self.exchanges: dict[RequestId, Exchange] = {}
        self.standalone: SSEStream | None = None
        self.streams: set[SSEStream] = set()
        self._stream_numbers = 0
        self._writable_waiters = WriteWaiters()
        self._expiry: IDelayedCall | None = None
        self._active_at = 0.0
        self._unowned: Exchange | None = None  # see dispatch_unowned
        self.session: Session = resource.host.open_session(  # counted once its initialize succeeds
            self.route, transport="http", identity=identity, peer=peer, flow=self, counted=False)
        self.session.stream_closer = self.close_stream

    # -- routing what the session sends ---------------------------------

    def route(self, data: bytes, related: RequestId | None, answer: bool) -> None:
        # An answer under no request id is one to a batch with no request (dispatch_unowned).
        exchange = self.exchanges.get(related) if related is not None else self._unowned if answer else None
        if exchange is None:
            event_id = self.events.add(STANDALONE, data)
            if self.standalone is not None:
                self.standalone.send(event_id, data)
            return
        if answer:
            for request_id in exchange.ids:
                self.exchanges.pop(request_id, None)
            if exchange.sse is None and exchange.pending is None and exchange.request is not None and (
                    exchange.json_only or not self.resource.settings.always_stream):
                self._answer_json(exchange, data)
                return
        self._stream(exchange, data)
        if answer:
            if exchange.sse is not None:
                exchange.sse.finish()
            elif exchange.pending is not None and exchange.request is not None:
                # The whole stream within render(): one body, no chunking.
                _sse_head(exchange.request, self.id_header)
                exchange.sync_body = b"".join(exchange.pending)
            self._touch()  # its client may have left: nothing else restarts the timer

    def _answer_json(self, exchange: Exchange, data: bytes) -> None:
        request = exchange.request
        assert request is not None
        _put(request, _CONTENT_TYPE, b"application/json")
        _put(request, _SESSION, self.id_header)
        if exchange.sync_body is None and not request.startedWriting:
            if getattr(request, "_rendering", False):
                exchange.sync_body = data  # render() returns it
            else:
                request.setHeader("Content-Length", str(len(data)))
                request.write(data)
                request.finish()
        self._touch()

    def _stream(self, exchange: Exchange, data: bytes) -> None:
        request = exchange.request
        if exchange.sse is None and request is not None:
            if getattr(request, "_rendering", False):
                if exchange.pending is None:
                    exchange.pending = self._priming(exchange.stream_id)
            else:
                exchange.sse = self._open_stream(request, exchange.stream_id)
        # Numbered after the priming event, so that resuming from it replays this.
        event_id = self.events.add(exchange.stream_id, data)
        if exchange.sse is not None:
            exchange.sse.send(event_id, data)
        elif exchange.pending is not None:
            pending = exchange.pending
            pending.append(_event(event_id, data))
            if len(pending) > _MOST_PENDING_EVENTS or sum(map(len, pending)) > _MOST_PENDING_BYTES:
                self.open_pending(exchange)  # a chatty handler: under flow control now

    def _priming(self, stream_id: str) -> list[bytes]:
        """A new stream's first event: an id to resume from and ``retry``
        (since 2025-11-25; older clients do not resume a request's stream)."""
        if not version_at_least(self.session.protocol_version, PRIMING_SINCE):
            return []
        return [_event(self.events.reserve(stream_id), b"", self.resource.settings.retry_ms)]

    def _open_stream(
        self, request: server.Request, stream_id: str, events: list[bytes] | None = None
    ) -> SSEStream:
        """Start an SSE response with ``events`` (by default, the priming one)."""
        stream = SSEStream(request, self)
        self.streams.add(stream)
        self._touch()
        for event in self._priming(stream_id) if events is None else events:
            stream.write(event)
        return stream

    def open_pending(self, exchange: Exchange) -> None:
        """render() returns with the answer still to come: what it buffered
        starts the stream."""
        if exchange.pending is not None and exchange.sse is None and exchange.request is not None:
            exchange.sse = self._open_stream(exchange.request, exchange.stream_id, exchange.pending)
        exchange.pending = None

    def close_stream(self, request_id: RequestId) -> None:
        """End a request's stream now (SEP-1699): the client reconnects with
        ``Last-Event-ID`` after the ``retry`` delay and gets the rest."""
        exchange = self.exchanges.get(request_id)
        if exchange is None or exchange.request is None:
            return
        if not version_at_least(self.session.protocol_version, PRIMING_SINCE):
            return  # before 2025-11-25 a client does not resume a request's stream
        self.open_pending(exchange)
        if exchange.sse is None:
            exchange.sse = self._open_stream(exchange.request, exchange.stream_id)
        exchange.sse.finish()
        exchange.sse = None
        exchange.request = None

    def new_exchange(
        self, request: server.Request, ids: Iterable[RequestId], batch: bool = False
    ) -> Exchange:
        self._stream_numbers += 1
        exchange = Exchange(request, ids, str(self._stream_numbers), batch)
        for request_id in exchange.ids:
            self.exchanges[request_id] = exchange
        # A running request holds the session open (_check_idle), and its end
        # notes the activity (route): the timer only needs to be armed.
        if self._expiry is None:
            self._touch()
        return exchange

    def dispatch_unowned(self, request: server.Request, batch: list[jsonrpc.BatchItem]) -> Exchange | None:
        """Dispatch a batch with no well-formed request; the exchange its
        answer went to, or None when it was owed none.

        What the session owes it (errors for its malformed items, or for its
        size) it sends at once and under no request id. That answers this
        POST, not the GET stream: 200 and JSON-RPC's array of errors, as a
        batch with a request gets its errors (a 400 would carry one error
        with no id, where each malformed item has its own).
        """
        exchange = Exchange(request, (), "", batch=True)  # answered within render(): no stream, no id
        exchange.json_only = True
        self._unowned = exchange
        try:
            self.session.dispatch(batch)
        finally:
            self._unowned = None
        return exchange if exchange.sync_body is not None else None

    def watch_open(self, exchange: Exchange) -> None:
        """After render(): notice its client leaving an exchange still open
        (one answered within render() needs no Deferred)."""
        request = exchange.request
        if request is not None and any(i in self.exchanges for i in exchange.ids):
            self._watch(exchange, request)

    def _watch(self, exchange: Exchange, request: server.Request) -> None:
        request.notifyFinish().addErrback(lambda _: self._client_left(exchange, request))

    def _client_left(self, exchange: Exchange, request: server.Request) -> None:
        # The spec: a disconnect is not a cancellation. The handler goes on
        # and what it sends waits in the event store. A connection that was
        # taken over by a resumed stream detaches nothing.
        if exchange.request is request:
            exchange.request = None
            exchange.sse = None

    def end_cancelled(self, items: Iterable[jsonrpc.BatchItem]) -> None:
        """End the POSTs of requests the client has just cancelled.

        The session sends nothing for a cancelled request, as the spec asks,
        but its POST must still end, or the client's connection hangs: it
        gets an error answer, as the official Python SDK sends. A request
        the session still runs was not cancelled (in a batch, its cancel came
        before it and was ignored): its own answer ends its POST.
        """
        for item in items:
            if type(item) is not Notification or item.method != Notify.CANCELLED:
                continue
            request_id = item.params.get("requestId") if isinstance(item.params, dict) else None
            if not jsonrpc.is_request_id(request_id) or self.session.running(request_id):
                continue
            exchange = self.exchanges.get(request_id)
            if exchange is None:
                continue
            exchange.cancelled.add(request_id)
            if exchange.cancelled >= exchange.ids:  # nothing of it still runs
                errors = [jsonrpc.error_response(i, RPCError(REQUEST_CANCELLED, "Request cancelled"))
                          for i in sorted(exchange.ids, key=str)]
                self.route(jsonrpc.encode(errors if exchange.batch else errors[0]), request_id, True)

    def _exchange_of(self, stream_id: str) -> Exchange | None:
        return next((e for e in self.exchanges.values() if e.stream_id == stream_id), None)

    def resumable(self, last_event_id: str) -> str | None:
        """The stream a GET with this ``Last-Event-ID`` may resume, or None.

        Not one whose POST still waits for a JSON answer: that stream has
        sent nothing, so no client holds an id of it, and taking it over
        would leave the POST unanswered.
        """
        found = self.events.after(last_event_id)
        if found is None:
            return None
        exchange = self._exchange_of(found[0])
        if exchange is not None and exchange.sse is None and exchange.request is not None:
            return None
        return found[0]

    def resume(self, request: server.Request, last_event_id: str) -> None:
        """Attach a GET to the stream its ``Last-Event-ID`` names (see
        ``resumable``): what was missed, then what comes."""
        found = self.events.after(last_event_id)
        assert found is not None
        stream_id, missed = found
        if self.events.gap_after(last_event_id):
            self.resource.log_replay_gap(session=self.id[:8])
        exchange = self._exchange_of(stream_id)
        if exchange is not None and exchange.sse is not None:
            # Its client reconnected before this end noticed the old
            # connection die: the new one takes over.
            exchange.sse.finish()
        stream = SSEStream(request, self)
        stream.keep_alive()
        self.streams.add(stream)
        for event_id, data in missed:
            stream.send(event_id, data)
        if stream_id == STANDALONE:
            self.standalone = stream
        elif exchange is not None:
            exchange.request, exchange.sse = request, stream
            self._watch(exchange, request)
        else:
            stream.finish()  # that request was answered: everything was replayed

    # -- OutputFlow -------------------------------------------------------

    def when_writable(self) -> Deferred[None]:
        # Most answers are written inside render(), with no stream open.
        if not self.streams or not any(stream.paused for stream in self.streams):
            return succeed(None)
        return self._writable_waiters.wait()

    def congested(self) -> bool:
        if not self.streams:
            return False
        limit = self.resource.settings.max_output_buffer
        return any(stream.paused and stream.buffered() > limit for stream in self.streams)

    def stream_writable(self) -> None:
        if not any(stream.paused for stream in self.streams):
            self._writable_waiters.release()

    def stream_closed(self, stream: SSEStream) -> None:
        self.streams.discard(stream)
        if self.standalone is stream:
            self.standalone = None
        self.stream_writable()
        self._touch()

    # -- lifetime -----------------------------------------------------------

    def _touch(self) -> None:
        """Note activity. One timer per session, re-armed when it fires: the
        session expires ``session_idle_timeout`` after its last activity, and
        not while a stream or a request is open (no timer churn per request)."""
        timeout = self.resource.settings.session_idle_timeout
        if not timeout:
            return
        clock = self.resource.host.clock
        self._active_at = clock.seconds()
        if self._expiry is None:
            self._expiry = clock.callLater(timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._expiry = None
        timeout = self.resource.settings.session_idle_timeout
        clock = self.resource.host.clock
        left = self._active_at + timeout - clock.seconds()
        if self.streams or self.exchanges:
            self._expiry = clock.callLater(timeout, self._check_idle)
        elif left > 0:
            self._expiry = clock.callLater(left, self._check_idle)
        else:
            self._expired()

    def _expired(self) -> None:
        log.info("Session {session} expired after {timeout:g} s idle", session=self.id[:8],
                 timeout=self.resource.settings.session_idle_timeout)
        self.end()

    def end(self) -> None:
        """Close the session: running handlers are cancelled, streams end,
        and POSTs still waiting for a JSON answer get the 404 of a session
        that is gone."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self.resource.sessions.pop(self.id, None)
        exchanges, self.exchanges = set(self.exchanges.values()), {}
        for exchange in exchanges:
            request = exchange.request
            if exchange.sse is None and request is not None and not getattr(request, "_rendering", False):
                body = _error_body(request, 404, INVALID_REQUEST, "Session ended")
                request.setHeader("Content-Length", str(len(body)))
                request.write(body)
                request.finish()
        for stream in list(self.streams):
            stream.finish()
        self.events.close()
        self.session.close("HTTP session ended")
        self.resource.host.session_closed(self.session)
        self._writable_waiters.release()


class BoundedRequest(server.Request):
    """A request whose body may not pass the site's ``max_body_size``.

    twisted.web reads any body into memory or a temporary file; this refuses
    an oversize one with 413 before reading it (declared length) or as soon
    as it passes the limit (chunked), and always buffers in memory.
    """

    refused = False

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self._received = 0
        site: MCPSite = self.channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
        self._limit = limit = site.max_body_size
        if length is not None and length > limit:
            # Twisted answers "Expect: 100-continue" after this call: drop the
            # header, or "100 Continue" would follow the 413 on the wire.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse(limit)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self._received = received = self._received + len(data)
        if received > self._limit:
            self._refuse(self._limit)
            return
        assert self.content is not None  # gotLength made it
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.refused:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # mypy#16653

    # server.Request.process sets postpath, which only resource traversal
    # reads: the dispatcher is a leaf, so it is made when first asked for.
    _postpath: list[bytes] | None = None
    _postpath_due = False

    @property
    def postpath(self) -> list[bytes] | None:
        if self._postpath_due:
            self._postpath_due = False
            self._postpath = list(map(unquote, self.path[1:].split(b"/")))
        return self._postpath

    @postpath.setter
    def postpath(self, value: list[bytes] | None) -> None:
        self._postpath_due = False
        self._postpath = value

    def process(self) -> None:
        """Hand the request to the site's dispatcher with this server's name
        in the Server header and the Date of this second (made once a second)
        set once: twisted.web sets both on every request, and the Server
        header again when mcp-twisted replaces its name."""
        if not _RAW or self.path == b"*":
            super().process()  # type: ignore[no-untyped-call]  # mypy#16653
            return
        raw = self.responseHeaders._rawHeaders
        raw[_SERVER] = [SERVER_NAME]
        raw[_DATE] = [_Date.now()]
        self.prepath = []
        self._postpath_due = True
        try:
            # MCPSite.getResourceFor gives its dispatcher: a leaf, not an encoding resource.
            site: MCPSite = self.channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
            self.render(site.getResourceFor(self))  # type: ignore[no-untyped-call]  # mypy#16653
        except BaseException:
            self.processingFailed(Failure())  # type: ignore[no-untyped-call]  # mypy#16653

    def _refuse(self, limit: int) -> None:
        self.refused = True
        self.content = io.BytesIO()
        body = f"Content Too Large: the limit is {limit} bytes\n".encode()
        transport = self.channel.transport
        assert transport is not None  # a body is arriving on it
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        transport.loseConnection()
        log.info("Refused a request body over {limit} bytes (HTTP 413)", limit=limit)


class _Head:
    """A request's headers by their ``Headers`` keys (``_KEYS``): each lookup
    through twisted.web's API encodes the name again, and a POST needs about
    ten."""

    __slots__ = ("_values",)

    def __init__(self, request: server.Request) -> None:
        if _RAW:
            self._values: Mapping[bytes, list[bytes]] = request.requestHeaders._rawHeaders
        else:
            self._values = {name.lower(): list(values)
                            for name, values in request.requestHeaders.getAllRawHeaders()}

    def __call__(self, name: bytes) -> str | None:
        """The last value of a header (as ``Request.getHeader``), or None."""
        values = self._values.get(name)
        return values[-1].decode("utf-8", "replace") if values else None

    def joined(self, name: bytes) -> str:
        """Every value of a header, comma-joined (RFC 9110 list headers)."""
        return b",".join(self._values.get(name, ())).decode("utf-8", "replace")


@functools.lru_cache(maxsize=64)  # clients send one Accept each; bounded, as the header is theirs
def _accepts(header: str, types: tuple[str, ...]) -> bool:
    offered = {part.split(";")[0].strip().lower() for part in header.split(",")}
    return "*/*" in offered or all(t in offered or t.split("/")[0] + "/*" in offered for t in types)


class _ScopeCheck:
    """Step-up authorization: a request for a tool, resource or prompt
    declared with scopes its token lacks gets 403 ``insufficient_scope``
    before it reaches the app. Only where both sides take part: an
    authenticator that knows scopes (OAuth) and an app that declares them."""

    def __init__(self, needed: Any, refuse: Any) -> None:
        self.needed = needed  # (method, params) -> the scopes it needs
        self.refuse = refuse  # (identity, scopes) -> Refusal | None

    @classmethod
    def of(cls, host: SessionHost) -> _ScopeCheck | None:
        needed = getattr(host.app, "required_scopes", None)
        refuse = getattr(host.admission.auth, "scope_refusal", None)
        return cls(needed, refuse) if needed is not None and refuse is not None else None

    def refusal(self, identity: Any, message: jsonrpc.Message | list[jsonrpc.BatchItem]) -> Refusal | None:
        for item in message if isinstance(message, list) else (message,):
            if type(item) is Request:
                scopes = self.needed(item.method, item.params)
                if scopes:
                    refused: Refusal | None = self.refuse(identity, scopes)
                    if refused is not None:
                        return refused
        return None


def _finish_with(request: server.Request, body: bytes | int) -> None:
    """End a request that render() left open, as render() would have."""
    if body is not server.NOT_DONE_YET:
        assert isinstance(body, bytes)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()


# Refusals that come after the Origin check: a browser page may read them.
_AFTER_ORIGIN = frozenset({"auth", "scope", "auth-server"})


def _allow_origin(request: server.Request, origin: str) -> None:
    """CORS: an admitted browser origin may read the answer and its session id."""
    request.setHeader(b"Access-Control-Allow-Origin", origin.encode("utf-8", "replace"))
    request.setHeader(b"Access-Control-Expose-Headers", b"Mcp-Session-Id, WWW-Authenticate")
    request.setHeader(b"Vary", b"Origin")


_ALLOW = b"GET, POST, DELETE, OPTIONS"
_CORS_METHODS = b"GET, POST, DELETE"
# What MCP clients send; a preflight asks for them by name (Authorization is
# never covered by a wildcard).
_CORS_HEADERS = frozenset({"accept", "authorization", "content-type", "last-event-id", "mcp-method",
                           "mcp-name", "mcp-protocol-version", "mcp-session-id"})
_PARAM_HEADER = re.compile(r"mcp-param-[a-z0-9!#$%&'*+.^_`|~-]+")  # a token (RFC 9110)
_POST_TYPES = ("application/json", "text/event-stream")
_GET_TYPES = ("text/event-stream",)


def _is_json(content_type: str | None) -> bool:
    if content_type == "application/json":  # what clients send
        return True
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def _error_body(request: server.Request, status: int, code: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    return jsonrpc.encode(jsonrpc.error_response(None, RPCError(code, message)))


def _unsupported_version(request: server.Request, version: str) -> bytes:
    return _error_body(request, 400, INVALID_REQUEST,
                       f"Unsupported MCP-Protocol-Version: {jsonrpc.clip(version)}")


def _plain(request: server.Request, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    request.setResponseCode(status, _REASONS.get(status))
    request.setHeader("Content-Type", "text/plain; charset=utf-8")
    for name, value in headers:
        request.setHeader(name, value)
    return text.encode() + b"\n"


# Twisted has no reason phrase for these.
_REASONS = {421: b"Misdirected Request", 413: b"Content Too Large"}


@implementer(IResource)
class MCPHTTPResource(Resource):
    """Streamable HTTP for one app; a leaf, so it answers on any path and
    admission (hosting) refuses the wrong ones with 404."""

    isLeaf = True

    def __init__(self, host: SessionHost, settings: HTTPSettings | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # mypy#16653
        self.host = host
        self.settings = settings if settings is not None else HTTPSettings()
        self.sessions: dict[str, HTTPSession] = {}
        self.replay_budget = ReplayBudget(self.settings.max_replay_total)
        self._scopes = _ScopeCheck.of(host)
        # Requests whose token is being checked, and who waits for there to be none:
        # at shutdown each must still get its answer before the process ends.
        self._admitting: dict[server.Request, _Head] = {}
        self._admitted_waiters: list[Deferred[None]] = []
        self.log_replay_gap = RepeatedEventLog(
            log, host.clock, "Resumed {count} stream(s) whose missed events were partly given up to the "
            "replay limits (--max-replay-events, --max-replay-size, --replay-ttl); last: session {session}")
        self._log_malformed = RepeatedEventLog(
            log, host.clock, "Refused {count} malformed POST(s); last: {peer}, HTTP {status}: {why}")

    # -- entry --------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        request.defaultContentType = None  # no text/html on empty answers (202, 204)
        method = request.method
        if method == b"POST":
            return self._admitted(request, self._post)
        if method == b"GET":
            return self._admitted(request, self._get)
        if method == b"DELETE":
            return self._admitted(request, self._delete)
        if method == b"OPTIONS":
            return self._admitted(request, self._preflight, credentials=False)
        # Admitted first, as every method is: an unknown path is 404, a foreign Host 421.
        return self._admitted(request, self._not_allowed, credentials=False)

    def _not_allowed(self, request: server.Request, identity: Any, head: _Head) -> bytes:
        request.setHeader(b"Allow", _ALLOW)
        return _plain(request, 405, "Method Not Allowed")

    def _admitted(self, request: server.Request, handler: Any, credentials: bool = True) -> bytes | int:
        head = _Head(request)
        try:
            identity = self.host.admit(self._admission_request(request, head, credentials))
        except Refusal as refusal:
            return self._refused(request, head, refusal)
        if isinstance(identity, Deferred):
            # The token is checked elsewhere first (keys to fetch, an
            # introspection endpoint). Not cancelled if the client leaves:
            # other requests may be waiting for the same fetch.
            self._admitting[request] = head
            identity.addCallbacks(self._admitted_later, self._refused_later,
                                  callbackArgs=(request, handler, head), errbackArgs=(request, head))
            identity.addBoth(self._admission_ended, request)
            return server.NOT_DONE_YET
        return self._render_admitted(request, handler, head, identity)

    def _render_admitted(
        self, request: server.Request, handler: Any, head: _Head, identity: Any
    ) -> bytes | int:
        origin = head(_ORIGIN)
        if origin is not None:
            _allow_origin(request, origin)
        request._rendering = True  # type: ignore[attr-defined]
        try:
            return handler(request, identity, head)  # type: ignore[no-any-return]
        finally:
            request._rendering = False  # type: ignore[attr-defined]

    def _refused(self, request: server.Request, head: _Head, refusal: Refusal) -> bytes:
        origin = head(_ORIGIN)
        log.info("Refused {peer} ({reason}): HTTP {code}", peer=self._peer(request), reason=refusal.reason,
                 code=refusal.status, host=head(_HOST), origin=origin, path=request.path.decode("latin-1"))
        if origin is not None and refusal.reason in _AFTER_ORIGIN:  # the Origin passed: the page may read why
            _allow_origin(request, origin)
        return _plain(request, refusal.status, refusal.text, refusal.headers)

    def _admitted_later(self, identity: Any, request: server.Request, handler: Any, head: _Head) -> None:
        if request.finished or request._disconnected:
            return  # the client left while its token was checked
        _finish_with(request, self._render_admitted(request, handler, head, identity))

    def _refused_later(self, failure: Failure, request: server.Request, head: _Head) -> None:
        if request.finished or request._disconnected:
            return  # the client left while its token was checked
        if failure.check(Refusal):
            refusal = cast(Refusal, failure.value)
        else:
            log.failure("Checking a token failed", failure)
            refusal = Refusal(500, "auth", "Internal Server Error")
        _finish_with(request, self._refused(request, head, refusal))

    def _admission_ended(self, result: object, request: server.Request) -> object:
        self._admitting.pop(request, None)
        if not self._admitting:
            waiters, self._admitted_waiters = self._admitted_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def admissions_settled(self) -> Deferred[None]:
        """Fires once no request waits for its token check (the shutdown's
        drain waits for this too, within its timeout)."""
        waiter: Deferred[None] = Deferred()
        if self._admitting:
            self._admitted_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def _admission_request(self, request: server.Request, head: _Head, credentials: bool) -> AdmissionRequest:
        channel = request.channel
        on_loopback = getattr(channel, "on_loopback", None)  # the listener's, known from the first request
        if on_loopback is None:
            on_loopback = listener_is_loopback(request.getHost())
            if isinstance(channel, _Channel):
                channel.on_loopback = on_loopback
        return AdmissionRequest(
            path=request.path.decode("latin-1"),
            host=head(_HOST) or "",
            origin=head(_ORIGIN),
            authorization=head(_AUTHORIZATION),
            on_loopback=on_loopback,
            tls_transport=channel.transport,
            opens_session=request.method == b"POST" and not head(_SESSION),
            credentials=credentials,
        )

    def _preflight(self, request: server.Request, identity: Any, head: _Head) -> bytes:
        """OPTIONS: the CORS preflight of a browser page on an admitted origin
        (a web-based MCP client), or a plain list of the methods."""
        request.setHeader(b"Allow", _ALLOW)
        if head(_ORIGIN) is not None:
            asked = head.joined(_AC_REQUEST_HEADERS).lower().split(",")
            # Mcp-Param-* names depend on the tools (2026-07-28 routing headers).
            params = {name.strip() for name in asked if _PARAM_HEADER.fullmatch(name.strip())}
            request.setHeader(b"Access-Control-Allow-Methods", _CORS_METHODS)
            request.setHeader(b"Access-Control-Allow-Headers", ", ".join(sorted(_CORS_HEADERS | params)))
            request.setHeader(b"Access-Control-Max-Age", b"600")
        request.setResponseCode(204)
        return b""

    def _session(
        self, request: server.Request, identity: Any, session_id: str | None, version: str | None
    ) -> HTTPSession | bytes:
        """The session of a request with these ``Mcp-Session-Id`` and
        ``MCP-Protocol-Version`` headers, or the error body to answer with."""
        if not session_id:
            return _error_body(request, 400, INVALID_REQUEST,
                               "Bad Request: Mcp-Session-Id header is required")
        http_session = self.sessions.get(session_id)
        # Another identity's session is as good as unknown: 404, not 403.
        if http_session is None or http_session.identity != identity:
            return _error_body(request, 404, INVALID_REQUEST, "Session not found")
        if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
            return _unsupported_version(request, version)
        return http_session

    # -- POST ---------------------------------------------------------------

    def _post(self, request: server.Request, identity: Any, head: _Head) -> bytes | int:
        if not _is_json(head(_CONTENT_TYPE)):
            self._malformed(request, 415, "not application/json")
            return _plain(request, 415, "Unsupported Media Type: send application/json")
        if not _accepts(head.joined(_ACCEPT), _POST_TYPES):
            self._malformed(request, 406, "Accept lacks application/json or text/event-stream")
            return _error_body(request, 406, INVALID_REQUEST,
                               "Not Acceptable: Accept must include application/json and text/event-stream")
        try:
            body = request.content.getvalue()  # type: ignore[union-attr]  # BoundedRequest always makes it
            message = jsonrpc.parse(body)
        except MessageError as e:
            self._malformed(request, 400, e.message)
            return _error_body(request, 400, e.code, e.message)
        if self._scopes is not None:
            refusal = self._scopes.refusal(identity, message)
            if refusal is not None:
                return self._refused(request, head, refusal)
        session_id = head(_SESSION)
        if session_id is None:
            stateless = self._stateless(request, identity, message, head(_VERSION))
            if stateless is not None:
                return stateless
        # One message, as nearly every POST carries, goes without the lists a batch needs.
        batch = message if isinstance(message, list) else None
        initialize: Request | None = None
        if batch is not None:
            initialize = next(
                (m for m in batch if type(m) is Request and m.method == Method.INITIALIZE), None)
        elif type(message) is Request and message.method == Method.INITIALIZE:
            initialize = message
        if initialize is not None and session_id is None:
            if batch is not None:
                return _error_body(request, 400, INVALID_REQUEST, "initialize must be sent alone")
            return self._initialize(request, identity, initialize)
        found = self._session(request, identity, session_id, head(_VERSION))
        if isinstance(found, bytes):
            return found
        http_session = found
        # The same subject's newer token (a refresh, a step-up) holds the scopes that count now.
        http_session.session.attributes["identity"] = identity
        if batch is not None and http_session.session.protocol_version not in BATCHING_VERSIONS:
            # Refused here: the session's answer would belong to no request
            # (a batch of notifications) and go to the GET stream.
            return _error_body(request, 400, INVALID_REQUEST,
                               "Batches are not accepted in this protocol revision")
        exchanges = http_session.exchanges
        ids: list[RequestId]
        if batch is not None:
            ids = [m.id for m in batch if type(m) is Request]
            in_use = any(request_id in exchanges for request_id in ids)
        elif type(message) is Request:
            ids = [message.id]
            in_use = message.id in exchanges
        else:
            ids, in_use = [], False
        if in_use:
            # The session would refuse it too, but its answer would be filed
            # under the running request's POST, which would then never end.
            return _error_body(request, 400, INVALID_REQUEST,
                               "Request id is already in use by a request in flight")
        exchange: Exchange | None = None
        if ids:
            exchange = http_session.new_exchange(request, ids, batch is not None)
            http_session.session.dispatch(message)
        elif batch is not None:
            exchange = http_session.dispatch_unowned(request, batch)
        else:
            http_session.session.dispatch(message)
        if batch is not None:
            http_session.end_cancelled(batch)
        elif not isinstance(message, (list, Request)):  # a request cancels nothing (list: for mypy)
            http_session.end_cancelled((message,))
        if exchange is None:
            http_session._touch()
            request.setResponseCode(202)
            return b""
        return self._reply(request, exchange, http_session)

    def _malformed(self, request: server.Request, status: int, why: str) -> None:
        """Log a POST refused for its form, once per interval with a count."""
        self._log_malformed(peer=self._peer(request), status=status, why=jsonrpc.clip(why))

    def _stateless(
        self, request: server.Request, identity: Any, message: jsonrpc.Message | list[jsonrpc.BatchItem],
        header: str | None,
    ) -> bytes | int | None:
        """Serve a 2026-07-28 POST (see ``stateless_http``); None for
        handshake-era traffic. That revision has no batches and no responses
        from clients; its notifications are accepted and dropped. ``header``:
        the request's ``MCP-Protocol-Version``."""
        if type(message) is not Request:
            if header is None or header in SUPPORTED_PROTOCOL_VERSIONS:
                return None
            if header not in MODERN_VERSIONS:
                return _unsupported_version(request, header)
            if type(message) is Notification:
                request.setResponseCode(202)
                return b""
            return _error_body(request, 400, INVALID_REQUEST, "2026-07-28 takes one request per POST")
        try:
            modern = classify(message, header)
        except RPCError as error:
            request.setResponseCode(http_status(error.code))
            request.setHeader("Content-Type", "application/json")
            return jsonrpc.encode(jsonrpc.error_response(message.id, error))
        if modern is None:
            return None
        routing_headers = getattr(self.host.app, "routing_headers", None)
        header_params = routing_headers(message) if routing_headers is not None else {}
        return serve_stateless(self, request, identity, message, self._peer(request), header_params)

    def _initialize(self, request: server.Request, identity: Any, message: Request) -> bytes | int:
        http_session = HTTPSession(self, identity, self._peer(request))
        exchange = http_session.new_exchange(request, [message.id])
        exchange.json_only = True
        http_session.session.dispatch(message)
        body = exchange.sync_body
        if body is not None and http_session.session.initialize_result is not None:
            # Only a successful initialize makes a session.
            self.sessions[http_session.id] = http_session
            self.host.accepted("http")
            request.setHeader(SESSION_HEADER, http_session.id)
            log.info("Opened HTTP session {session} for {peer} (identity {identity!r})",
                     session=http_session.id[:8], peer=self._peer(request), identity=identity)
            http_session._touch()
            return body
        http_session.end()
        request.responseHeaders.removeHeader(SESSION_HEADER)
        return body if body is not None else _error_body(request, 500, -32603, "Internal error")

    def _reply(self, request: server.Request, exchange: Exchange, http_session: HTTPSession) -> bytes | int:
        if exchange.sync_body is not None:
            return exchange.sync_body
        http_session.open_pending(exchange)
        http_session.watch_open(exchange)
        if exchange.sse is not None:
            exchange.sse.keep_alive()
        return server.NOT_DONE_YET

    # -- GET and DELETE -------------------------------------------------------

    def _get(self, request: server.Request, identity: Any, head: _Head) -> bytes | int:
        if not _accepts(head.joined(_ACCEPT), _GET_TYPES):
            return _error_body(request, 406, INVALID_REQUEST,
                               "Not Acceptable: Accept must include text/event-stream")
        found = self._session(request, identity, head(_SESSION), head(_VERSION))
        if isinstance(found, bytes):
            return found
        http_session = found
        last_event_id = head(_LAST_EVENT_ID) or ""
        # An id this session cannot resume opens its stream afresh.
        stream_id = http_session.resumable(last_event_id) if last_event_id else None
        if stream_id in (None, STANDALONE) and http_session.standalone is not None:
            return _plain(request, 409, "Conflict: this session's stream is already open")
        if stream_id is None:
            http_session.standalone = http_session._open_stream(request, STANDALONE)
            http_session.standalone.keep_alive()
        else:
            http_session.resume(request, last_event_id)
        return server.NOT_DONE_YET

    def _delete(self, request: server.Request, identity: Any, head: _Head) -> bytes | int:
        found = self._session(request, identity, head(_SESSION), head(_VERSION))
        if isinstance(found, bytes):
            return found
        log.info("Session {session} ended by its client", session=found.id[:8])
        found.end()
        request.setResponseCode(204)
        return b""

    def _peer(self, request: server.Request) -> str:
        """Who sent a request, for the logs: the client a trusted proxy names, or the TCP peer."""
        trusted = self.settings.trusted_proxies
        if trusted:
            client = trusted.request_client(request)
            if client is not None:
                return client
        address = request.getClientAddress()
        host = getattr(address, "host", None)
        return f"{type(address).__name__}:{host}:{getattr(address, 'port', '')}" if host else str(address)

    # -- shutdown -------------------------------------------------------------

    def close_all(self) -> None:
        """End every session (after the drain): streams finish, handlers stop.
        Requests whose token check outlived the drain are answered 503 now
        (the check, when it ends, finds them finished)."""
        for http_session in list(self.sessions.values()):
            http_session.end()
        draining = Refusal(503, "draining", "Service Unavailable: shutting down")
        for request, head in list(self._admitting.items()):
            if not (request.finished or request._disconnected):
                _finish_with(request, self._refused(request, head, draining))


# Twisted releases since twisted#12413 (2025) can leave form parsing off; older
# ones parse every POST's Content-Type as a possible form, which costs time only.
_NO_FORM_PARSING: dict[str, Any] = (
    {"parsePOSTFormSubmission": False}
    if "parsePOSTFormSubmission" in inspect.signature(server.Site.__init__).parameters else {}
)


def _default_connection_cap(sessions: int) -> int:
    """Twice the session cap plus some room, but below the process's limit on
    open files, so that files and connections to other servers (an OAuth
    provider, the event bus) still open when the listener is full."""
    if not sessions:
        return 0
    cap = 2 * sessions + 64
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, max(soft - 256, 64))
    return cap


class _Channel(http.HTTPChannel):
    """An HTTP/1.1 connection, counted by its site while it serves HTTP.

    Its idle timeout (``timeOut``, the site's ``timeout``) is one timer that
    checks a deadline when it fires and is armed again for what is left:
    Twisted's ``TimeoutMixin`` cancels its timer as each request begins and
    makes a new one as it ends, two reactor calls a request.
    """

    site: MCPSite  # set by Site.buildProtocol before the connection is made
    on_loopback: bool | None = None  # whether the listener's address is a loopback one (admission)
    _idle_call: IDelayedCall | None = None
    _idle_deadline = 0.0

    def connectionMade(self) -> None:
        self._clock: IReactorTime = self.site.reactor  # whose callLater HTTPFactory.buildProtocol gave
        super().connectionMade()  # type: ignore[no-untyped-call]  # mypy#16653
        self.site.connections.add(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # Twisted's own is untyped
        self.site.connections.discard(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # mypy#16653
        self.stop_idle_timer()

    def setTimeout(self, period: float | None) -> float | None:
        """``TimeoutMixin.setTimeout``: None while a request is handled (the
        timer then lapses unanswered), the idle timeout again after it."""
        previous = self.timeOut
        self.timeOut = period  # type: ignore[assignment]  # seconds, as MCPSite's timeout: a float
        if period is not None:
            self._idle_deadline = deadline = self._clock.seconds() + period
            call = self._idle_call
            if call is None:
                self._idle_call = self.callLater(period, self._idle_expired)  # type: ignore[no-untyped-call]
            elif call.getTime() > deadline:
                call.reset(period)
        return previous

    def resetTimeout(self) -> None:
        if self._idle_call is not None and self.timeOut is not None:
            self._idle_deadline = self._clock.seconds() + self.timeOut

    def _idle_expired(self) -> None:
        self._idle_call = None
        if self.timeOut is None:
            return  # a request is being handled; setTimeout arms the timer again after it
        left = self._idle_deadline - self._clock.seconds()
        if left > 0:
            self._idle_call = self.callLater(left, self._idle_expired)  # type: ignore[no-untyped-call]
        else:
            self.timeoutConnection()  # type: ignore[no-untyped-call]  # mypy#16653

    def stop_idle_timer(self) -> None:
        """No idle timeout any more (the connection is gone, or is not HTTP's any more)."""
        self.timeOut = None
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()


class MCPSite(server.Site):
    """One listener for both transports: a GET with ``Upgrade: websocket``
    goes to Autobahn, everything else to Streamable HTTP (either may be off)."""

    requestFactory = BoundedRequest
    # HTTP/1.1 only: no ALPN is offered, so Twisted's HTTP/2 switch is not needed.
    protocol = _Channel  # type: ignore[assignment]  # a channel, not the switch

    def __init__(
        self,
        http: MCPHTTPResource | None,
        websocket: WebSocketResource | None,
        *,
        max_body_size: int,
        timeout: float = 60.0,
        reactor: IReactorTime | None = None,
        extra: Mapping[str, IResource] | None = None,
        max_connections: int | None = None,
    ) -> None:
        """
        :param max_connections: HTTP connections open at once (WebSocket
            ones count against the session cap from their upgrade on); more
            are closed as soon as they are accepted. By default twice the
            session cap (a client may hold a POST connection and a stream)
            plus some room, below the limit on open files; 0 for no limit.
        :param extra: other resources by exact path, served beside MCP (the
            OAuth protected-resource metadata, whose paths admission would
            refuse with 404).
        :param timeout: seconds a connection may sit idle between requests
            (or in an unfinished request head) before it is closed.
        :param reactor: the clock of that timeout; by default the HTTP
            resource's, so that every timer of the transport is on one clock.
        """
        if reactor is None and http is not None:
            reactor = http.host.clock
        # No form parsing: by default twisted.web parses every POST's
        # Content-Type with the email package, in case the body is a form.
        super().__init__(_Dispatcher(http, websocket, extra or {}), timeout=timeout, reactor=reactor,
                         **_NO_FORM_PARSING)  # type: ignore[no-untyped-call]  # mypy#16653
        self.max_body_size = max_body_size
        self.displayTracebacks = False
        self.noisy = False
        host = http.host if http is not None else getattr(getattr(websocket, "_factory", None), "host", None)
        if max_connections is None:
            sessions = host.limits.max_sessions if host is not None else 0
            max_connections = _default_connection_cap(sessions)
        self.max_connections = max_connections
        self.connections: set[_Channel] = set()
        self._metrics = host.metrics if host is not None else None
        self._log_refused = RepeatedEventLog(
            log, reactor if reactor is not None else self.reactor,
            "Closed {count} new connection(s): {limit} open already (the connection cap)")

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """A channel; None over the connection cap (closed at once)."""
        if self.max_connections and len(self.connections) >= self.max_connections:
            self._log_refused(limit=self.max_connections)
            if self._metrics is not None:
                self._metrics.handshake_refusals.labels("connections").inc()
            return None
        return super().buildProtocol(addr)  # type: ignore[no-untyped-call]  # mypy#16653

    def log(self, request: http.Request) -> None:
        """No access log line per request: sessions, refusals and failures
        are logged with their fields instead (see docs/operations.md)."""

    def getResourceFor(self, request: server.Request) -> Any:
        _put(request, _SERVER, SERVER_NAME)  # not Twisted's name and version
        # The dispatcher is a leaf that answers every path (admission refuses
        # the wrong ones): no resource traversal.
        request.site = self
        request.sitepath = []  # type: ignore[attr-defined]  # Site.getResourceFor sets it too
        return self.resource


@implementer(IResource)
class _Dispatcher(Resource):
    isLeaf = True

    def __init__(
        self,
        http: MCPHTTPResource | None,
        websocket: WebSocketResource | None,
        extra: Mapping[str, IResource],
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # mypy#16653
        self.http = http
        self.websocket = websocket
        self.extra = {path.encode(): resource for path, resource in extra.items()}

    def render(self, request: server.Request) -> bytes | int:
        if self.extra and request.path in self.extra:
            return self.extra[request.path].render(request)  # type: ignore[no-any-return]
        if (request.method == b"GET" and self.websocket is not None
                and (request.getHeader("upgrade") or "").lower() == "websocket"):
            answer = self.websocket.render(request)
            channel = request.channel
            if channel.transport is None and isinstance(channel, _Channel):
                channel.site.connections.discard(channel)  # a WebSocket session now, under the session cap
                channel.stop_idle_timer()
            return answer  # type: ignore[no-any-return]
        if self.http is not None:
            return self.http.render(request)
        request.defaultContentType = None
        return _plain(request, 426 if self.websocket is not None else 404,
                      "Upgrade Required: this endpoint speaks WebSocket" if self.websocket is not None
                      else "Not Found", [("Upgrade", "websocket")] if self.websocket is not None else ())
