"""One MCP conversation, in either role, with no I/O of its own.

A ``Session`` is fed JSON texts with ``receive()`` and emits JSON texts through
the ``send`` callable it was given; every timer goes through the
``IReactorTime`` it was given. That makes it the same object under the
WebSocket transport, a future HTTP transport, the server and the client, and
lets tests drive it with ``task.Clock`` and a list as the "socket".

What it owns: the handshake-era lifecycle (``initialize`` negotiation and
``notifications/initialized``), request ids, the in-flight tables in both
directions, cancellation, progress, timeouts, batches, and ``ping``. What a
request *means* is decided by the ``SessionHandler`` it was given (the server
app's method table, or the client's handlers for server-initiated requests).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mcp_twisted import jsonrpc
from mcp_twisted._lograte import RepeatedEventLog
from mcp_twisted.eras import REMOVED_IN_STATELESS, ConnectionEra, Era, Modern
from mcp_twisted.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    LocalProtocolError,
    MCPError,
    MessageError,
    Notification,
    Request,
    RequestId,
    Response,
    RPCError,
    brief,
    clip,
)
from mcp_twisted.protocol import (
    BATCHING_VERSIONS,
    REQUEST_TIMEOUT,
    SERVER_BUSY,
    SERVER_SHUTTING_DOWN,
    SUPPORTED_PROTOCOL_VERSIONS,
    Method,
    Notify,
    invalid_params,
    negotiate_version,
    version_at_least,
)

__all__ = [
    "MAX_TIMEOUT_RESETS",
    "TRANSITIONS",
    "ConnectionLost",
    "Event",
    "IncomingRequest",
    "OutgoingRequest",
    "OutputFlow",
    "RequestTimedOut",
    "Role",
    "Session",
    "SessionHandler",
    "State",
    "as_deferred",
    "new_error_id",
]

log = Logger()


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    NEW = "new"  # nothing negotiated yet
    INITIALIZING = "initializing"  # initialize answered (server) or sent (client)
    READY = "ready"  # notifications/initialized sent (client) or received (server)
    DRAINING = "draining"  # new requests are refused; running ones finish
    CLOSED = "closed"


class Event(enum.Enum):
    """What moves a session from one ``State`` to the next."""

    INITIALIZE = "initialize"  # server: initialize answered; client: initialize sent
    INITIALIZED = "initialized"  # server: notifications/initialized came; client: the result was accepted
    DRAIN = "drain"  # shutdown began
    CLOSE = "close"  # the transport is gone


_OPEN_STATES = (State.NEW, State.INITIALIZING, State.READY, State.DRAINING)
# The members the per-message path compares with, as module names: on
# Python 3.11 ``State.READY`` goes through ``EnumType.__getattr__`` (about
# 150 ns), and a call compares the state half a dozen times.
_NEW, _READY, _DRAINING, _CLOSED = State.NEW, State.READY, State.DRAINING, State.CLOSED
_HANDSHAKE = Era.HANDSHAKE

# The whole lifecycle, for both roles: every state change goes through this
# table (Session._advance), so an event in the wrong state fails in one place.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.NEW, Event.INITIALIZE): State.INITIALIZING,
    (State.INITIALIZING, Event.INITIALIZED): State.READY,
    **{(state, Event.DRAIN): State.DRAINING for state in _OPEN_STATES},
    **{(state, Event.CLOSE): State.CLOSED for state in _OPEN_STATES},
}


class ConnectionLost(MCPError):
    """The session ended while a request was waiting for its answer."""


class RequestTimedOut(MCPError):
    """The peer did not answer a request in time; it was sent a cancellation."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"{method!r} got no answer within {timeout:g} s")
        self.method = method
        self.timeout = timeout


Send = Callable[[bytes, "RequestId | None", bool], object]
"""What a session writes with: ``send(data, related, answer)``.

``related`` is the id of the peer's request the message belongs to: its
answer, its progress and log messages, and requests a handler makes while
answering it (None for messages no request owns, such as list changes).
``answer`` is True for the message that answers ``related`` (for a batch:
the whole array, filed under its first request). WebSocket and stdio ignore
both; Streamable HTTP puts each message on the right stream with them.
"""


class OutputFlow(Protocol):
    """How the transport below tells a session that the peer is not keeping up.

    A session that is told nothing (``flow=None``) writes as fast as its
    handlers produce, which is right for tests and in-memory peers.
    """

    def when_writable(self) -> Deferred[None]:
        """Fires once the peer has taken enough output that more may be sent."""

    def congested(self) -> bool:
        """True while unsent output is over the limit: droppable messages
        (progress, log messages) are dropped instead of queued."""


class SessionHandler(Protocol):
    """What a session needs from the application above it."""

    def describe(self, session: Session) -> dict[str, Any]:
        """Server role: ``capabilities``, ``serverInfo`` and ``instructions``
        for the ``initialize`` result (client capabilities are known by now)."""

    def handle_request(self, request: IncomingRequest) -> Any:
        """Answer a request: a result, a Deferred, or a coroutine; raise
        ``RPCError`` for an error response."""

    # Optional: ``quick``, method -> ``QuickHandler`` (see there). A handler
    # without it has every request go through ``handle_request``.

    def handle_notification(self, session: Session, method: str, params: Any) -> None:
        """React to a notification the session does not consume itself."""

    def session_ready(self, session: Session) -> None:
        """The handshake finished; the session may now be sent notifications."""

    def session_closed(self, session: Session) -> None:
        """The session ended; drop whatever was kept for it."""


# Answers a request from its params (an object without ``_meta``: no progress
# token) and the session alone, without an ``IncomingRequest``: a result dict,
# a Deferred or coroutine of one (the session then tracks it as any other), or
# ``SLOW`` to have ``handle_request`` take it (it must not have done anything
# then). Asked only for handshake-era requests outside batches, once the
# session's own checks passed. It should not raise (an exception becomes an
# internal error): what can fail is decided before, or inside the result.
QuickHandler = Callable[[dict[str, Any], "Session"], Any]
SLOW: Any = object()


class IncomingRequest:
    """A request from the peer, from arrival until it is answered or cancelled.

    Protocol version and client capabilities are read through the request, not
    the session: a 2026-07-28 request carries its own in ``_meta`` (``modern``).
    """

    __slots__ = (
        "_batch",
        "_last_progress",
        "_timer",
        "abort_error",
        "cancelled",
        "deferred",
        "early_result",
        "id",
        "method",
        "modern",
        "params",
        "progress_token",
        "rounds",
        "session",
        "started",
        "timed_out",
    )

    def __init__(
        self, session: Session, message: Request, batch: _Batch | None, modern: Modern | None = None
    ) -> None:
        self.session = session
        self.id: RequestId = message.id
        self.method = message.method
        params = message.params
        self.params: dict[str, Any] = params if params is not None else {}
        meta = self.params.get("_meta") if type(params) is dict else None
        self.progress_token = meta.get("progressToken") if type(meta) is dict else None
        self.cancelled = False
        self.timed_out = False
        # Set when the session gives up on the handler (shutdown): the error
        # the peer gets instead of the handler's answer.
        self.abort_error: RPCError | None = None
        # What a 2026-07-28 request says about itself (None: handshake era).
        self.modern = modern
        # Set by finish_early: the answer that replaces the handler's.
        self.early_result: dict[str, Any] | None = None
        # The app's multi-round state for this request (2026-07-28), if it asked.
        self.rounds: Any = None
        self.deferred: Deferred[Any] | None = None
        self._batch = batch
        self._timer: IDelayedCall | None = None
        self._last_progress: float | None = None
        self.started = 0.0

    @property
    def protocol_version(self) -> str:
        return self.modern.version if self.modern is not None else self.session.protocol_version

    @property
    def client_capabilities(self) -> dict[str, Any]:
        return self.modern.capabilities if self.modern is not None else self.session.peer_capabilities

    @property
    def client_info(self) -> dict[str, Any]:
        return self.modern.client_info if self.modern is not None else self.session.peer_info

    def finish_early(self, result: dict[str, Any]) -> None:
        """Answer with ``result`` now and cancel the handler: a 2026-07-28
        round that needs the client's input, or a listen stream that ends."""
        if self.done:
            return
        self.early_result = result
        if self.deferred is not None:
            self.deferred.cancel()

    @property
    def done(self) -> bool:
        return self.cancelled or self.session._incoming.get(self.id) is not self

    def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Send ``notifications/progress`` if the peer asked for it.

        Progress must grow with each notification (the spec says MUST), so a
        value that does not is a programming error and raises ``ValueError``.
        """
        if self.progress_token is None or self.done:
            return
        if self._last_progress is not None and progress <= self._last_progress:
            raise ValueError(f"progress must increase: {progress} after {self._last_progress}")
        self._last_progress = progress
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None and version_at_least(self.protocol_version, "2025-03-26"):
            params["message"] = message
        self.session.notify(Notify.PROGRESS, params, droppable=True, related=self.id)


class OutgoingRequest:
    """A request we sent, waiting for the peer's answer."""

    __slots__ = ("deadline", "deferred", "id", "method", "on_progress", "timeout", "timer")

    def __init__(
        self,
        request_id: int,
        method: str,
        deferred: Deferred[Any],
        on_progress: Callable[[float, float | None, str | None], object] | None,
        timeout: float | None,
    ) -> None:
        self.id = request_id
        self.method = method
        self.deferred = deferred
        self.on_progress = on_progress
        self.timeout = timeout
        self.timer: IDelayedCall | None = None
        self.deadline = float("inf")


class _Batch:
    """Collects the answers to one incoming batch and sends them together.

    Each answer is kept encoded, with its request id (for the "too large"
    error that may replace it). An answer waiting here holds an in-flight
    slot of the session, and its id (``Session._held``), until the batch is
    sent: for the client that request is still unanswered.
    """

    __slots__ = ("pending", "related", "replies", "session")

    def __init__(self, session: Session, pending: int, related: RequestId | None) -> None:
        self.session = session
        self.pending = pending
        self.related = related  # the request the transport files the whole answer under
        self.replies: list[tuple[RequestId | None, bytes]] = []

    def add(self, request_id: RequestId | None, reply: bytes | None) -> None:
        if reply is not None:
            self.replies.append((request_id, reply))
            self.session._held.append(request_id)
        self.pending -= 1
        if self.pending == 0 and self.replies:
            self.session._write_batch(self.replies, self.related)


class _Default(enum.Enum):
    """A typed "not given" (None means "no timeout")."""

    TIMEOUT = enum.auto()


_NO_TIMEOUT = _Default.TIMEOUT

# What a session reports at most once per interval, with a count (Session._report).
_REPORTS = {
    "busy": "Refused {count} request(s): {limit} requests in flight",
    "dropped": "Dropped {count} progress/log notification(s): the peer is not reading",
    "batch_refused": "Refused a batch of over {limit} messages ({count} since the last report)",
    "too_large": "Answer to {method} is {size} bytes, over the {limit}-byte message limit: "
                 "sent an error instead ({count} since the last report)",
    "peer_error": "Peer reported an error ({count} since the last report): {error}",
    "notification_failed": "Handler for notification {method} raised again ({count} since the last report)",
    "progress_failed": "Progress callback for {method} raised again ({count} since the last report)",
}

# The answer to a request whose id is too large to send back.
_ID_TOO_LARGE = jsonrpc.encode(jsonrpc.error_response(None, RPCError(
    INTERNAL_ERROR, "Answer too large to send: the request's id alone is over the message limit")))

# Progress notifications restart a request's timeout, up to this many times its
# length in all: a peer that reports progress forever still gets cut off.
MAX_TIMEOUT_RESETS = 10


class Session:
    """An MCP peer: feed it texts with ``receive``, it answers through ``send``.

    ``max_in_flight`` bounds the requests the peer may have running here at
    once; one more gets an immediate error rather than a queue.
    ``request_timeout`` bounds how long our own requests wait for an answer;
    ``handler_timeout`` bounds how long a handler may run on a peer request.
    """

    def __init__(
        self,
        send: Send,
        *,
        role: Role,
        handler: SessionHandler,
        clock: IReactorTime,
        max_in_flight: int = 64,
        request_timeout: float | None = 60.0,
        handler_timeout: float | None = None,
        observer: Callable[[str, str, float], object] | None = None,
        max_message_size: int | None = None,
        max_batch_size: int = 64,
        flow: OutputFlow | None = None,
    ) -> None:
        self.role = role
        self._server = role is Role.SERVER
        self.handler = handler
        self.clock = clock
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.handler_timeout = handler_timeout
        # Told (method, outcome, seconds) as each request is answered or cancelled.
        self.observer = observer
        # The largest message the transport can carry (None: no limit): an
        # answer over it becomes an error answer instead of a lost connection.
        self.max_message_size = max_message_size
        self.max_batch_size = max_batch_size
        self.flow = flow
        self._quick: dict[str, QuickHandler] = (getattr(handler, "quick", None) or {}) if self._server else {}
        # Set by a transport whose requests have streams of their own
        # (Streamable HTTP): ends one request's stream early (SEP-1699).
        self.stream_closer: Callable[[RequestId], object] | None = None
        self.state = State.NEW
        self.protocol_version: str = SUPPORTED_PROTOCOL_VERSIONS[-1]
        self.peer_capabilities: dict[str, Any] = {}
        self.peer_info: dict[str, Any] = {}
        self.initialize_result: dict[str, Any] | None = None
        # Free for the layers above (auth identity, per-connection data).
        self.attributes: dict[str, Any] = {}
        self._idle_waiters: list[Deferred[None]] = []
        self._send = send
        self._incoming: dict[RequestId, IncomingRequest] = {}
        self._outgoing: dict[RequestId, OutgoingRequest] = {}
        self._next_id = 0
        # The ids of answers waiting in unfinished batches: they hold in-flight
        # slots, and their ids are still in use.
        self._held: list[RequestId | None] = []
        # Server role: the era this connection speaks, fixed by its first request.
        self._era = ConnectionEra()
        # Keyed notifications held while the peer is behind (see notify).
        self._coalesced: dict[object, tuple[str, dict[str, Any] | None, RequestId | None]] = {}
        # One RepeatedEventLog per kind of report, made when it is first needed
        # (four of them cost an idle session about 1.7 KiB).
        self._reports: dict[str, RepeatedEventLog] | None = None

    def _report(self, kind: str, times: int = 1, **fields: Any) -> None:
        """Log a repeated event of one of the ``_REPORTS`` kinds, at most once per interval."""
        self._reporter(kind)(times, **fields)

    def _reporter(self, kind: str) -> RepeatedEventLog:
        reports = self._reports
        if reports is None:
            reports = self._reports = {}
        report = reports.get(kind)
        if report is None:
            report = reports[kind] = RepeatedEventLog(log, self.clock, _REPORTS[kind])
        return report

    def _callback_failed(self, kind: str, first: str, **fields: Any) -> None:
        """An application callback raised on a peer's message (call it in the
        ``except``): the first time with the traceback (``first``); after
        that, as the peer may repeat the message, once per interval with a
        count."""
        if self._reports is not None and kind in self._reports:
            self._reports[kind](**fields)
            return
        log.failure(first, level=LogLevel.error, **fields)
        self._reporter(kind).logged_elsewhere()

    def _advance(self, event: Event) -> None:
        """Move to the state ``TRANSITIONS`` gives for ``event``; the one place
        that refuses an event in the wrong state."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise LocalProtocolError(
                f"Session {self.role.value}: {event.value!r} is not possible in state {self.state.value!r}"
            ) from None

    @property
    def era(self) -> Era | None:
        """The era this connection speaks (server role), once its first request came."""
        return self._era.era

    @property
    def draining(self) -> bool:
        """True once ``drain()`` was called (and until the session closes)."""
        return self.state is State.DRAINING

    # -- input ------------------------------------------------------------

    def receive(self, text: bytes | str) -> None:
        """Handle one JSON text from the peer (a message or a batch)."""
        state = self.state
        if state is _CLOSED:
            return
        try:
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise jsonrpc.parse_error() from None
            if type(obj) is dict and state is _READY and self._quick and self._era.era is _HANDSHAKE:
                # The common request in one step: a well-formed handshake-era
                # request (as decode and _on_request would find it) that the
                # quick table takes, with its id free and a slot for it.
                # Anything else, refusals included, goes the long way below.
                method: Any = obj.get("method")
                request_id, params = obj.get("id"), obj.get("params")
                quick = self._quick.get(method) if type(method) is str else None
                if (quick is not None and type(params) is dict and "_meta" not in params
                        and (type(request_id) is int or type(request_id) is str)
                        and obj.get("jsonrpc") == "2.0" and request_id not in self._incoming
                        and request_id not in self._held
                        and len(self._incoming) + len(self._held) < self.max_in_flight):
                    if not self._answer_quickly(quick, request_id, method, params):
                        # Declined: every check of _on_request has passed already.
                        self._start(Request(request_id, method, params), None, None)
                    return
            message = jsonrpc.decode(obj)
        except MessageError as e:
            if e.answers:
                self._on_response(e)
                return
            log.debug("Refused message: {error}", error=e.message)
            self._write(jsonrpc.error_response(e.request_id, e), e.request_id, answer=True)
            return
        if type(message) is Request:
            self._on_request(message, None)
        else:
            self.dispatch(message)

    def dispatch(self, message: jsonrpc.Message | list[jsonrpc.BatchItem]) -> None:
        """Handle a message that was parsed already (a transport that must
        look at it first, as Streamable HTTP does, parses only once)."""
        if self.state is _CLOSED:
            return
        if type(message) is Request:
            self._on_request(message, None)
        elif isinstance(message, list):
            self._on_batch(message)
        elif type(message) is Notification:
            self._on_notification(message)
        else:
            self._on_response(message)

    def _on_batch(self, items: list[jsonrpc.BatchItem]) -> None:
        related = next((item.id for item in items if type(item) is Request), None)
        if self.protocol_version not in BATCHING_VERSIONS or self.state is State.NEW:
            self._write(jsonrpc.error_response(
                None, RPCError(INVALID_REQUEST, "Batches are not accepted in this protocol revision")
            ), related, answer=True)
            return
        if len(items) > self.max_batch_size:
            self._report("batch_refused", limit=self.max_batch_size)
            self._write(jsonrpc.error_response(None, RPCError(
                INVALID_REQUEST, f"Batch too large: {len(items)} messages (limit {self.max_batch_size})",
                {"limit": self.max_batch_size})), related, answer=True)
            return
        requests = sum(1 for item in items
                       if type(item) is Request or (type(item) is MessageError and not item.answers))
        batch = _Batch(self, requests, related) if requests else None
        # A batch counts against the in-flight limit as a whole: answers of
        # quick handlers wait in the batch, so they hold their slots too.
        slots = self.max_in_flight - len(self._incoming) - len(self._held)
        refused = 0
        for item in items:
            if type(item) is Request:
                if item.method == Method.INITIALIZE:
                    error = RPCError(INVALID_REQUEST, "initialize must not be sent in a batch")
                    self._reply(batch, jsonrpc.error_response(item.id, error))
                elif slots <= 0 and item.method != Method.PING:
                    refused += 1
                    self._refuse_busy(item, batch)
                else:
                    slots -= 1
                    self._on_request(item, batch)
            elif type(item) is MessageError:
                if item.answers:
                    self._on_response(item)
                else:
                    self._reply(batch, jsonrpc.error_response(item.request_id, item))
            elif type(item) is Notification:
                self._on_notification(item)
            else:
                self._on_response(item)
        if refused:
            self._report("busy", refused, limit=self.max_in_flight)

    def _refuse_busy(self, message: Request, batch: _Batch | None) -> None:
        error = RPCError(
            SERVER_BUSY,
            f"Too many requests in flight (limit {self.max_in_flight}); retry later",
            {"limit": self.max_in_flight},
        )
        self._reply(batch, jsonrpc.error_response(message.id, error))
        if self.observer is not None:  # so that hitting a limit shows in the metrics
            self.observer(message.method, "refused", 0.0)

    def _on_request(self, message: Request, batch: _Batch | None) -> None:
        method = message.method
        modern = None
        if self._server:
            try:
                modern = self._era.check(message)
            except RPCError as refused:
                self._reply(batch, jsonrpc.error_response(message.id, refused))
                return
            if modern is not None and method in REMOVED_IN_STATELESS:
                error = RPCError(METHOD_NOT_FOUND, f"Method not found: {method} is not in {modern.version}")
                self._reply(batch, jsonrpc.error_response(message.id, error))
                return
        if method == Method.PING:
            self._reply(batch, jsonrpc.response(message.id, {}))
            return
        if (self.state is not _READY or method == Method.INITIALIZE) and not self._lifecycle_allows(
                message, batch, modern):
            return
        if message.id in self._incoming or message.id in self._held:
            error = RPCError(INVALID_REQUEST, "Request id is already in use by a request in flight")
            self._reply(batch, jsonrpc.error_response(message.id, error))
            return
        if len(self._incoming) + len(self._held) >= self.max_in_flight:
            if batch is None:
                self._report("busy", limit=self.max_in_flight)
            self._refuse_busy(message, batch)
            return
        if isinstance(message.params, list):
            # Every MCP method takes named params; handlers rely on a dict.
            error = invalid_params("MCP requests take params as an object, not an array")
            self._reply(batch, jsonrpc.error_response(message.id, error))
            return
        params = message.params
        if modern is None and batch is None and type(params) is dict and "_meta" not in params:
            quick = self._quick.get(method)
            if quick is not None and self._answer_quickly(quick, message.id, method, params):
                return
        self._start(message, batch, modern)

    def _start(self, message: Request, batch: _Batch | None, modern: Modern | None) -> None:
        """Run the handler on a request that passed every check."""
        request = IncomingRequest(self, message, batch, modern)
        if self.observer is not None:
            request.started = self.clock.seconds()
        # In flight before the handler runs, so that it can report progress at
        # once (a coroutine runs up to its first real wait inside this call).
        self._incoming[message.id] = request
        try:
            result = self.handler.handle_request(request)
        except Exception:
            self._request_failed(Failure(), request)
            return
        self._track(request, result)

    def _answer_quickly(self, quick: QuickHandler, request_id: RequestId, method: str, params: Any) -> bool:
        """Answer through the handler's quick table; False if it declined.

        A quick handler cannot see the request (no context, no progress
        token), so nothing needs it in the in-flight table while it runs:
        the common synchronous call is answered with no ``IncomingRequest``.
        """
        started = self.clock.seconds() if self.observer is not None else 0.0
        try:
            result = quick(params, self)
        except Exception:
            result = fail()
        if result is SLOW:
            return False
        if type(result) is not dict:  # a Deferred or a coroutine: tracked as any other
            request = IncomingRequest(self, Request(request_id, method, params), None)
            request.started = started
            self._incoming[request_id] = request
            self._track(request, result)
            return True
        self._answer(request_id, method, None, {"jsonrpc": "2.0", "id": request_id, "result": result})
        if self.observer is not None:
            self._observe(method, _outcome(result), started)
        return True

    def _track(self, request: IncomingRequest, result: Any) -> None:
        """Answer ``request`` with what its handler returned, now or when it settles."""
        if not isinstance(result, Deferred) and not hasattr(result, "__await__"):
            self._request_done(result, request)  # the common case: no Deferred needed
            return
        d = as_deferred(result)
        # An already settled Deferred answers now and releases the slot at once.
        d.addCallbacks(self._request_done, self._request_failed,
                       callbackArgs=(request,), errbackArgs=(request,))
        if request.cancelled:  # cancelled, or the session closed, while the handler ran
            d.cancel()
        elif self._incoming.get(request.id) is request:
            # Still running (possibly "fired" but waiting on a chained Deferred):
            # make it cancellable and bound its time.
            request.deferred = d
            # A listen stream (2026-07-28) runs until the client or the drain ends it, by design.
            if self.handler_timeout is not None and request.method != Method.SUBSCRIPTIONS_LISTEN:
                request._timer = self.clock.callLater(self.handler_timeout, self._handler_expired, request)

    def _lifecycle_allows(self, message: Request, batch: _Batch | None, modern: Modern | None) -> bool:
        """What the state says of a request outside the READY state, or of an
        ``initialize``: True to go on; False once it has been answered here."""
        method = message.method
        if self.state is _DRAINING:
            error = RPCError(SERVER_SHUTTING_DOWN, "Server is shutting down; reconnect and retry")
            self._reply(batch, jsonrpc.error_response(message.id, error))
            if self.observer is not None:
                self.observer(method, "refused", 0.0)
            return False
        if method == Method.INITIALIZE:
            if self._server:
                self._reply(batch, self._answer_initialize(message))
            else:
                error = RPCError(INVALID_REQUEST, "A client does not answer initialize")
                self._reply(batch, jsonrpc.error_response(message.id, error))
            return False
        if self._server and self.state is _NEW and modern is None:
            error = RPCError(INVALID_REQUEST, "Session not initialized: send 'initialize' first")
            self._reply(batch, jsonrpc.error_response(message.id, error))
            return False
        return True

    def _answer_initialize(self, message: Request) -> dict[str, Any]:
        if self.state is not State.NEW:
            return jsonrpc.error_response(
                message.id, RPCError(INVALID_REQUEST, "Session already initialized")
            )
        params = message.params
        if not isinstance(params, dict) or not isinstance(params.get("protocolVersion"), str):
            return jsonrpc.error_response(
                message.id, invalid_params("initialize needs params.protocolVersion (a string)")
            )
        capabilities = params.get("capabilities", {})
        client_info = params.get("clientInfo", {})
        if not isinstance(capabilities, dict) or not isinstance(client_info, dict):
            return jsonrpc.error_response(
                message.id, invalid_params("capabilities and clientInfo must be objects")
            )
        self.protocol_version = negotiate_version(params["protocolVersion"])
        self.peer_capabilities = capabilities
        self.peer_info = client_info
        try:
            result = {"protocolVersion": self.protocol_version, **self.handler.describe(self)}
            jsonrpc.encode(result)
        except Exception:
            error_id = new_error_id()
            log.failure("Describing the server failed (error id {error_id})", error_id=error_id)
            return jsonrpc.error_response(
                message.id, RPCError(INTERNAL_ERROR, "Internal error", {"errorId": error_id}))
        self.initialize_result = result
        self._advance(Event.INITIALIZE)
        return jsonrpc.response(message.id, result)

    def _request_done(self, result: Any, request: IncomingRequest) -> None:
        if request.early_result is not None:
            # The handler was cancelled to answer this instead; whatever it
            # made of the cancellation (a tool error result, say) is not sent.
            result = request.early_result
        if self._finish(request):
            if request.modern is not None and type(result) is dict and "resultType" not in result:
                result = {**result, "resultType": "complete"}  # required on every 2026-07-28 result
            self._answer(request.id, request.method, request._batch, jsonrpc.response(request.id, result))
            if self.observer is not None:
                self._observe(request.method, _outcome(result), request.started)
        elif self.observer is not None:
            self._observe(request.method, "cancelled", request.started)
        if self._idle_waiters:
            self._notify_if_idle()

    def _request_failed(self, failure: Failure, request: IncomingRequest) -> None:
        if request.early_result is not None:  # the handler was cancelled to answer this instead
            self._request_done(None, request)
            return
        if self._finish(request):
            self._answer_failure(failure, request)
            if self.observer is not None:
                self._observe(request.method, "timeout" if request.timed_out else "error", request.started)
        elif self.observer is not None:
            self._observe(request.method, "cancelled", request.started)
        if self._idle_waiters:
            self._notify_if_idle()

    def _observe(self, method: str, outcome: str, started: float) -> None:
        assert self.observer is not None  # only called when there is one
        try:
            self.observer(method, outcome, self.clock.seconds() - started)
        except Exception:
            log.failure("Request observer raised")

    def _notify_if_idle(self) -> None:
        # Called after the answer went out, so a drain() waiter that closes the
        # connection cannot cut off the last answer.
        if not self._incoming:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _answer_failure(self, failure: Failure, request: IncomingRequest) -> None:
        error = failure.value
        if request.abort_error is not None:
            error = request.abort_error
        elif request.timed_out:
            error = RPCError(
                REQUEST_TIMEOUT,
                f"Request {brief(request.method)} exceeded the handler time limit "
                f"({self.handler_timeout:g} s) and was cancelled",
            )
        elif not isinstance(error, RPCError):
            error_id = new_error_id()
            # Error, not critical: a failing handler is the app's bug, the
            # server itself is fine and goes on serving.
            log.failure(
                "Handler for {method} (request {request_id}) failed (error id {error_id})", failure,
                LogLevel.error, method=brief(request.method), request_id=brief(request.id), error_id=error_id,
            )
            error = RPCError(INTERNAL_ERROR, "Internal error", {"errorId": error_id})
        self._answer(request.id, request.method, request._batch, jsonrpc.error_response(request.id, error))

    def _answer(
        self, request_id: RequestId, method: str, batch: _Batch | None, reply: dict[str, Any]
    ) -> None:
        """Send a request's answer, encoded here even inside a batch: an answer
        JSON cannot carry becomes an internal error instead of losing the batch."""
        # The common answer in one step; one JSON cannot carry, or too large,
        # goes the way of everything else sent (_encoded).
        try:
            encoded: bytes | None = jsonrpc.encode(reply)
        except TypeError:
            encoded = None
        limit = self.max_message_size
        if encoded is None or (limit is not None and len(encoded) > limit):
            encoded = self._encoded(reply, method)
        if batch is not None:
            batch.add(request_id, encoded)
        elif encoded is not None:  # None only under a limit too small for any error
            self._send(encoded, request_id, True)

    def _too_large(self, method: object, request_id: RequestId | None, size: int) -> bytes:
        """The encoded error answer that replaces one the transport cannot carry;
        without the id when the id alone is too large to carry."""
        self._report("too_large", limit=self.max_message_size, method=brief(method), size=size)
        encoded = jsonrpc.encode(jsonrpc.error_response(request_id, RPCError(
            INTERNAL_ERROR, f"Result too large to send: {size} bytes (limit {self.max_message_size})",
            {"size": size, "limit": self.max_message_size})))
        limit = self.max_message_size
        return _ID_TOO_LARGE if limit is not None and len(encoded) > limit else encoded

    def _finish(self, request: IncomingRequest) -> bool:
        """Release a request's slot; True if an answer is still owed."""
        if request._timer is not None and request._timer.active():
            request._timer.cancel()
        if self._incoming.get(request.id) is request:
            del self._incoming[request.id]
        if request.cancelled:
            if request._batch is not None:
                request._batch.add(request.id, None)
            return False
        return self.state is not _CLOSED

    def _handler_expired(self, request: IncomingRequest) -> None:
        request.timed_out = True
        if request.deferred is not None:
            request.deferred.cancel()

    def _on_notification(self, message: Notification) -> None:
        method = message.method
        params = message.params if isinstance(message.params, dict) else {}
        if method == Notify.CANCELLED:
            self._peer_cancelled(params.get("requestId"))
        elif method == Notify.PROGRESS:
            self._peer_progress(params)
        elif method == Notify.INITIALIZED and self.role is Role.SERVER:
            if self.state is State.INITIALIZING:  # a repeat, or one in another state, is ignored
                self._advance(Event.INITIALIZED)
                self.handler.session_ready(self)
        elif self.state is not State.NEW or self.role is Role.CLIENT:
            try:
                self.handler.handle_notification(self, method, params)
            except Exception:
                self._callback_failed("notification_failed", "Handler for notification {method} raised",
                                      method=brief(method))

    def _peer_cancelled(self, request_id: object) -> None:
        # Unknown or finished ids are ignored, as the spec allows. initialize
        # is answered synchronously, so it can never be found here. Only a real
        # id may match: true would hash like 1 and a list would not hash at all.
        request = self._incoming.pop(request_id, None) if jsonrpc.is_request_id(request_id) else None
        if request is None:
            return
        request.cancelled = True
        if request.deferred is not None:
            request.deferred.cancel()

    def _peer_progress(self, params: dict[str, Any]) -> None:
        token = params.get("progressToken")
        outgoing = self._outgoing.get(token) if jsonrpc.is_request_id(token) else None
        if outgoing is None or outgoing.on_progress is None:
            return
        if outgoing.timer is not None and outgoing.timer.active():
            # Progress shows the peer is alive: give it a fresh timeout, but
            # never past MAX_TIMEOUT_RESETS times the timeout in all.
            remaining = outgoing.deadline - self.clock.seconds()
            outgoing.timer.reset(max(0.0, min(outgoing.timeout or 0.0, remaining)))
        try:
            progress: Any = params.get("progress")  # the peer's values are passed on unchecked
            outgoing.on_progress(progress, params.get("total"), params.get("message"))
        except Exception:
            self._callback_failed("progress_failed", "Progress callback for {method} raised",
                                  method=brief(outgoing.method))

    def _on_response(self, message: Response | jsonrpc.ErrorResponse | MessageError) -> None:
        """An answer to one of our requests; a malformed one (``MessageError``
        with ``answers``) fails it, as the peer's answer cannot be read."""
        request_id = message.request_id if type(message) is MessageError else message.id
        outgoing = self._outgoing.pop(request_id, None) if request_id is not None else None
        if outgoing is None:
            if type(message) is not Response:
                self._report("peer_error", error=clip(str(message if type(message) is MessageError
                                                          else message.error)))
            return  # a late answer to a request we gave up on
        if outgoing.timer is not None and outgoing.timer.active():
            outgoing.timer.cancel()
        if type(message) is Response:
            outgoing.deferred.callback(message.result)
        elif type(message) is MessageError:
            outgoing.deferred.errback(LocalProtocolError(
                f"Malformed answer to {outgoing.method}: {message.message}"))
        else:
            outgoing.deferred.errback(message.error)

    # -- output -----------------------------------------------------------

    def _write(self, message: dict[str, Any], related: RequestId | None = None, answer: bool = False) -> None:
        if self.state is _CLOSED:
            return
        encoded = self._encoded(message)
        if encoded is not None:
            self._send(encoded, related, answer)

    def _encoded(self, message: dict[str, Any], answering: str | None = None) -> bytes | None:
        """``message`` as JSON, fitted to the message limit (``_fit``); an
        answer names the method it answers (``answering``) in logs. One JSON
        cannot carry (a value not of a JSON type, or nested past the
        encoder's depth) must not end the session: an answer becomes an
        internal error, a notification or request is dropped."""
        what = answering if answering is not None else message.get("method", "an answer")
        try:
            encoded = jsonrpc.encode(message)
        except TypeError:
            log.failure("Could not send {what}: not JSON", level=LogLevel.error, what=brief(what))
            if "method" in message:
                return None
            encoded = jsonrpc.encode(jsonrpc.error_response(
                message.get("id"), RPCError(INTERNAL_ERROR, "Internal error: answer is not JSON")))
        return self._fit(message, encoded, what)

    def _fit(self, message: dict[str, Any], encoded: bytes, what: object) -> bytes | None:
        """``encoded``, or what replaces it when it is over the message limit:
        an answer becomes a "too large" error (every request gets one answer),
        a notification or request is dropped. An answer whose id alone is too
        large to carry is answered all the same, by an error without it (the
        transport still knows which request it ends); only a limit too small
        for that drops it."""
        limit = self.max_message_size
        if limit is None or len(encoded) <= limit:
            return encoded
        if "method" not in message:
            encoded = self._too_large(what, message.get("id"), len(encoded))
            if len(encoded) <= limit:
                return encoded
        log.warn("Dropped {method}: {size} bytes, over the {limit}-byte message limit",
                 method=brief(what), size=len(encoded), limit=limit)
        return None

    def _write_batch(self, replies: list[tuple[RequestId | None, bytes]], related: RequestId | None) -> None:
        """Send a batch's answers; if together they are too large, the largest
        become "too large" errors until the rest fits."""
        if self.state is State.CLOSED:
            return  # close() let go of every held answer
        for request_id, _ in replies:
            self._held.remove(request_id)
        parts = [reply for _, reply in replies]
        limit = self.max_message_size
        total = sum(map(len, parts)) + len(parts) + 1
        if limit is not None and total > limit:
            for i in sorted(range(len(parts)), key=lambda i: len(parts[i]), reverse=True):
                if total <= limit:
                    break
                replacement = self._too_large("a batch item", replies[i][0], len(parts[i]))
                total -= len(parts[i]) - len(replacement)
                parts[i] = replacement
        self._send(b"[" + b",".join(parts) + b"]", related, True)

    def _reply(self, batch: _Batch | None, message: dict[str, Any]) -> None:
        """Answer a request (``message`` carries its id) now or in its batch."""
        if batch is None:
            self._write(message, message.get("id"), answer=True)
        else:
            batch.add(message.get("id"), self._encoded(message))

    def notify(
        self, method: str, params: dict[str, Any] | None = None, *, droppable: bool = False,
        key: object = None,
        related: RequestId | None = None,
    ) -> None:
        """Send a notification (dropped silently once the session closed).

        While the transport says the peer is far behind, ``droppable`` ones
        (progress, log messages) are dropped, so a handler that does not wait
        for ``when_writable`` cannot make us buffer without end; ones with a
        ``key`` (list changes, resource updates) wait, and a later one with
        the same key replaces the waiting one: the peer learns the news once.
        ``related`` names the request it belongs to (see ``Send``).
        """
        if (droppable or key is not None) and self.flow is not None and self.flow.congested():
            if droppable:
                self._report("dropped")
                return
            if not self._coalesced:
                self.flow.when_writable().addCallback(self._send_coalesced)
            self._coalesced[key] = (method, params, related)
            return
        self._write(jsonrpc.notification(method, params), related)

    def _send_coalesced(self, _: object) -> None:
        waiting, self._coalesced = self._coalesced, {}
        for method, params, related in waiting.values():
            self._write(jsonrpc.notification(method, params), related)

    def when_writable(self) -> Deferred[None]:
        """Fires when the peer has room for more output (at once without a flow)."""
        if self.flow is None or self.state is State.CLOSED:
            return succeed(None)
        return self.flow.when_writable()

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | _Default | None = _NO_TIMEOUT,
        on_progress: Callable[[float, float | None, str | None], object] | None = None,
        related: RequestId | None = None,
    ) -> Deferred[Any]:
        """Send a request; the Deferred fires with the result.

        ``related`` is the peer's request being answered while this is asked
        (a handler's sampling or elicitation; see ``Send``).

        It fails with ``RPCError`` for an error answer, ``RequestTimedOut``
        after ``timeout`` seconds (default: the session's ``request_timeout``),
        and ``ConnectionLost`` if the session closes first. Cancelling it, or
        timing out, tells the peer with ``notifications/cancelled``.
        """
        if self.state is State.CLOSED:
            return fail(ConnectionLost("The session is closed"))
        request_id = self._next_id
        self._next_id += 1
        if on_progress is not None:
            params = dict(params or {})
            params["_meta"] = {**params.get("_meta", {}), "progressToken": request_id}
        if timeout is _NO_TIMEOUT:
            timeout = self.request_timeout
        try:
            encoded = jsonrpc.encode(jsonrpc.request(request_id, method, params))
        except TypeError as e:
            return fail(e)

        def cancel(_: Deferred[Any]) -> None:
            self._cancel_outgoing(request_id, "cancelled")

        d: Deferred[Any] = Deferred(cancel)
        outgoing = OutgoingRequest(request_id, method, d, on_progress, timeout)
        self._outgoing[request_id] = outgoing
        self._send(encoded, related, False)
        if timeout is not None:
            outgoing.deadline = self.clock.seconds() + timeout * MAX_TIMEOUT_RESETS
            outgoing.timer = self.clock.callLater(timeout, self._outgoing_expired, request_id)
        return d

    def _cancel_outgoing(self, request_id: int, reason: str) -> OutgoingRequest | None:
        outgoing = self._outgoing.pop(request_id, None)
        if outgoing is None:
            return None
        if outgoing.timer is not None and outgoing.timer.active():
            outgoing.timer.cancel()
        if outgoing.method != Method.INITIALIZE:
            self.notify(Notify.CANCELLED, {"requestId": request_id, "reason": reason})
        return outgoing

    def _outgoing_expired(self, request_id: int) -> None:
        outgoing = self._cancel_outgoing(request_id, "timed out")
        if outgoing is not None:
            outgoing.deferred.errback(RequestTimedOut(outgoing.method, outgoing.timeout or 0))

    # -- client role lifecycle ------------------------------------------

    def initialize(
        self,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
        protocol_version: str = SUPPORTED_PROTOCOL_VERSIONS[-1],
    ) -> Deferred[dict[str, Any]]:
        """Client role: run the handshake; fires with the ``initialize`` result.

        Fails with ``RPCError`` when the server answers with a revision this
        side does not speak (the caller should then disconnect), and with
        ``ConnectionLost`` on a closed session (which it must not reopen).
        """
        if self.state is State.CLOSED:
            return fail(ConnectionLost("The session is closed"))
        try:
            self._advance(Event.INITIALIZE)
        except LocalProtocolError as e:
            return fail(e)
        params = {"protocolVersion": protocol_version, "capabilities": capabilities,
                  "clientInfo": client_info}
        d = self.request(Method.INITIALIZE, params)

        def negotiated(result: dict[str, Any]) -> dict[str, Any]:
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if version not in SUPPORTED_PROTOCOL_VERSIONS:
                raise LocalProtocolError(f"Server chose unsupported revision {brief(version)}")
            self.protocol_version = version
            self.peer_capabilities = result.get("capabilities") or {}
            self.peer_info = result.get("serverInfo") or {}
            self.initialize_result = result
            self.notify(Notify.INITIALIZED)
            self._advance(Event.INITIALIZED)
            self.handler.session_ready(self)
            return result

        return d.addCallback(negotiated)

    # -- teardown ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests from the peer that are still running here."""
        return len(self._incoming)

    def running(self, request_id: RequestId) -> bool:
        """Whether the peer's request ``request_id`` is running here (not yet
        answered, cancelled or timed out)."""
        return request_id in self._incoming

    @property
    def waiting(self) -> int:
        """Our requests still waiting for the peer's answer."""
        return len(self._outgoing)

    def drain(self) -> Deferred[None]:
        """Refuse new requests (``-32003``); fires once none are running here.

        Used for graceful shutdown: answers already owed are still sent.
        """
        if self.state is State.CLOSED:
            return succeed(None)
        self._advance(Event.DRAIN)
        if not self._incoming:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def abort_running(self, error: RPCError) -> int:
        """Answer every request still running with ``error`` and cancel its
        handler; returns how many there were.

        Shutdown uses it after the drain timeout, so that every request gets
        exactly one answer before the connection closes.
        """
        running = list(self._incoming.values())
        for request in running:
            request.abort_error = error
            if request.deferred is not None:
                request.deferred.cancel()
        return len(running)

    def close(self, reason: str = "connection closed") -> None:
        """End the session: cancel running handlers, fail waiting requests."""
        if self.state is State.CLOSED:
            return
        self._advance(Event.CLOSE)
        self._held = []
        incoming, self._incoming = self._incoming, {}
        for request in incoming.values():
            request.cancelled = True
            if request._timer is not None and request._timer.active():
                request._timer.cancel()
            if request.deferred is not None:
                request.deferred.cancel()
        outgoing, self._outgoing = self._outgoing, {}
        for waiting in outgoing.values():
            if waiting.timer is not None and waiting.timer.active():
                waiting.timer.cancel()
            waiting.deferred.errback(ConnectionLost(reason))
        waiters, self._idle_waiters = self._idle_waiters, []
        for idle in waiters:
            idle.callback(None)
        try:
            self.handler.session_closed(self)
        except Exception:
            log.failure("session_closed hook raised")


def _outcome(result: object) -> str:
    """What the observer records for an answer that is not an error: a
    tool's own error (an ``isError`` result) is told apart."""
    return "tool_error" if type(result) is dict and result.get("isError") is True else "ok"


def new_error_id() -> str:
    """A short id that ties an error answer to its traceback in the log."""
    return secrets.token_hex(6)


def as_deferred(result: object) -> Deferred[Any]:
    """Wrap what a handler returned (value, Deferred or coroutine) in a Deferred."""
    if isinstance(result, Deferred):
        return result
    if hasattr(result, "__await__"):
        # Handlers' awaitables are coroutines (async def); fromCoroutine refuses any other.
        return Deferred.fromCoroutine(cast("Coroutine[Any, Any, Any]", result))
    return succeed(result)
