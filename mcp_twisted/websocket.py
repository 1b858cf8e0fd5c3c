"""The WebSocket transport: Autobahn server classes that carry MCP sessions.

One connection is one session: each text frame holds one JSON-RPC message
(or a 2025-03-26 batch). The protocol class is a thin adapter; everything MCP
happens in ``Session`` and the ``MCPServer`` app.

Who may connect is decided in ``onConnect`` before the upgrade, by the
hosting layer's admission (the same for every transport): path 404, drain
and capacity 503, Host 421, Origin 403, token 401. Autobahn's own origin
check is left open because it answers 400 and needs port-qualified patterns.
"""

from __future__ import annotations

import math
import struct
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcp_twisted._autobahn import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    SUBPROTOCOL,
    FastFactoryMixin,
    FastPathMixin,
    check_timer_settings,
)
from mcp_twisted._lograte import RepeatedEventLog
from mcp_twisted.eras import Era
from mcp_twisted.hosting import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_SESSIONS,
    Admission,
    AdmissionRequest,
    Authenticator,
    Limits,
    OriginPolicy,
    Refusal,
    SessionHost,
    StallLimit,
    WriteWaiters,
    is_ip_literal,
    is_loopback_host,
    listener_is_loopback,
    normalize_origin,
    unsent_bytes,
)
from mcp_twisted.proxy import TrustedProxies
from mcp_twisted.server import MCPServer
from mcp_twisted.session import Session, State

if TYPE_CHECKING:
    from mcp_twisted.metrics import Metrics

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_OUTPUT_BUFFER",
    "DEFAULT_MAX_SESSIONS",
    "SUBPROTOCOL",
    "FastFactoryMixin",
    "FastPathMixin",
    "MCPServerFactory",
    "MCPServerProtocol",
    "MCPWebSocketServerFactory",
    "MCPWebSocketServerProtocol",
    "OriginPolicy",
    "check_timer_settings",
    "is_ip_literal",
    "is_loopback_host",
    "normalize_origin",
    "tls_failure_text",
]

DEFAULT_MAX_OUTPUT_BUFFER = 4 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 16 * 1024

log = Logger()

# Autobahn's connection states, as module names: a class attribute costs a
# lookup through the class and its bases on every read and send.
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
# How Autobahn's failHandshake reason starts for an Origin it cannot parse.
_ORIGIN_INVALID = "HTTP Origin header invalid"


def tls_failure_text(error: SSL.Error) -> str:
    """``"http request"`` from ``[('SSL routines', '', 'http request')]``."""
    reasons = error.args[0] if error.args and isinstance(error.args[0], list) else []
    texts = [entry[-1] for entry in reasons if isinstance(entry, tuple) and entry]
    return ", ".join(str(t) for t in texts) or str(error)


class Keepalive:
    """WebSocket pings for all the connections of a factory, on one timer.

    Autobahn's auto-ping gives every connection two timers in txaio's batched
    timer (the next ping, the pong deadline: a ``list.remove`` in a bucket of
    thousands on every pong), a payload with random bytes from the kernel and
    its general frame writer; an idle session cost about 80 µs of server CPU a
    ping. Here a timer ticks once a second and looks only at the connections
    due at that tick. Each connection notes the tick whenever it hears from
    its peer (any bytes count, as with Autobahn's ``autoPingRestartOnAnyTraffic``):
    a connection heard from within ``interval`` is not pinged but looked at
    again when it would be due; one that has heard nothing for ``timeout``
    since its ping is dropped through ``onAutoPingTimeout``, as Autobahn does.
    Times are whole seconds (rounded up), as Autobahn's batched timer had them.
    """

    def __init__(self, clock: IReactorTime, interval: float, timeout: float) -> None:
        self.clock = clock
        self.interval = max(1, math.ceil(interval))
        self.timeout = max(1, math.ceil(timeout or interval))
        self.tick = 0
        self._due: dict[int, list[MCPWebSocketServerProtocol]] = {}
        self._timer: IDelayedCall | None = None
        self._started = 0.0

    def watch(self, connection: MCPWebSocketServerProtocol) -> None:
        """Keep an open connection alive from now on."""
        connection._heard = self.tick
        self.look_at(self.tick + self.interval, connection)

    def answered(self, connection: MCPWebSocketServerProtocol) -> None:
        """The peer answered its ping: the next is due an interval from now."""
        connection._ping_tick = None
        self.look_at(self.tick + self.interval, connection)

    def look_at(self, tick: int, connection: MCPWebSocketServerProtocol) -> None:
        """Look at ``connection`` at ``tick`` (and not at a tick set before)."""
        connection._due_tick = tick
        due = self._due.get(tick)
        if due is None:
            self._due[tick] = [connection]
        else:
            due.append(connection)
        if self._timer is None:
            self._started = self.clock.seconds() - self.tick
            self._timer = self.clock.callLater(1, self._run)

    def _run(self) -> None:
        # self._timer stays set while this runs, so that look_at starts no second timer.
        self.tick += 1
        tick = self.tick
        for connection in self._due.pop(tick, ()):
            if connection._due_tick != tick or connection.state != WebSocketProtocol.STATE_OPEN:
                continue  # moved to another tick, or closed since
            sent = connection._ping_tick
            if connection._heard > (sent - 1 if sent is not None else tick - self.interval):
                # Heard from since the ping, or within the interval: due again
                # one interval after it was last heard from.
                connection._ping_tick = connection.autoPingPending = None
                self.look_at(max(connection._heard + self.interval, tick + 1), connection)
            elif sent is None:
                connection._send_keepalive_ping(tick)
                self.look_at(tick + self.timeout, connection)
            else:
                connection.onAutoPingTimeout()
        self._timer = None
        if self._due:
            # On the clock's whole seconds since the start, so ticks do not drift.
            delay = self._started + self.tick + 1 - self.clock.seconds()
            self._timer = self.clock.callLater(max(0.0, delay), self._run)

    def stop(self) -> None:
        """Forget every connection (the factory stopped listening and closed them)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._due.clear()


@implementer(IPushProducer)
class MCPWebSocketServerProtocol(FastPathMixin, WebSocketServerProtocol):  # type: ignore[misc]  # Autobahn's two bases define peer and _transport_details differently
    """One WebSocket connection carrying one MCP session.

    Hooks for subclasses (call ``super()`` in each):

    - ``onConnect(request)``: before the upgrade; raise
      ``autobahn.websocket.types.ConnectionDeny(401, "...")`` to refuse (auth);
      store who connected in ``self.identity`` (handlers see ``ctx.identity``).
    - ``onOpen()``: the upgrade is done and the session exists.
    - ``onSessionReady()``: the client finished the MCP handshake.
    - ``onClose(wasClean, code, reason)``: the connection is gone and the
      session closed (running handlers cancelled, waiting requests failed).
    """

    factory: MCPWebSocketServerFactory
    session: Session | None = None
    identity: Any = None
    _deny_headers: list[tuple[str, str]] | None = None
    # The answer Autobahn waits for while the token is checked elsewhere.
    _admission: Deferred[Any] | None = None
    opened_at: float | None = None
    _metrics: Metrics | None = None
    # The factory's Keepalive (None: ping is off), the tick this connection
    # last heard from its peer, and the tick of its unanswered ping.
    _keepalive: Keepalive | None = None
    _heard = 0
    _ping_tick: int | None = None
    _due_tick = 0
    # Frames of the message being read. Set here too: a continuation frame
    # with no message begun (a protocol error, which Autobahn's failByDrop=False
    # closes with 1002 and then keeps parsing) reaches the count first.
    _fragments = 0

    def onConnect(  # type: ignore[override]  # Autobahn takes a Deferred too (txaio.as_future)
        self, request: ConnectionRequest
    ) -> str | Deferred[str | None] | None:
        identity = self._admit(request)
        if isinstance(identity, Deferred):
            # The token is checked elsewhere first (OAuth keys to fetch): the
            # upgrade waits, as Autobahn lets onConnect, for ``answer``. The
            # peer is not read meanwhile: a client must wait for the 101, and
            # what it sent early would pile up in Autobahn's buffer and be
            # parsed as one more upgrade request (another 101, another session).
            answer: Deferred[Any] = Deferred()
            self._admission = answer
            self.factory.admitting.add(self)
            self.transport.pauseProducing()
            identity.addBoth(self._settle_admission)
            return answer.addCallbacks(self._admitted, self._denied_later,
                                       callbackArgs=(request,), errbackArgs=(request,))
        return self._admitted(identity, request)

    def _settle_admission(self, result: Any) -> None:
        """The pending upgrade's answer: the token check's result, or the
        drain's 503. Only the first counts; none once the client has left
        (a 101 then would open a session nobody would ever close)."""
        answer, self._admission = self._admission, None
        self.factory.admitting.discard(self)
        if answer is None or self.state == _CLOSED:
            return  # answered already, or the client left or was dropped (handshake timeout)
        self.transport.resumeProducing()
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)

    def refuse_pending(self, refusal: Refusal) -> None:
        """Answer a pending upgrade with ``refusal`` now, whatever its token check says later."""
        self._settle_admission(Failure(refusal))

    def processHandshake(self) -> None:
        # Autobahn calls this for every read until the upgrade is answered:
        # while the token is checked, what arrives waits in its buffer.
        if self._admission is None:
            super().processHandshake()

    def _admit(self, request: ConnectionRequest, credentials: bool = True) -> Any:
        """The hosting layer's admission: the identity (or a Deferred of it),
        or ``ConnectionDeny`` with the refusal's status, logged and counted."""
        headers = request.headers
        # The client's real address, for the logs: a PROXY protocol header has
        # been read by now (Autobahn took the peer before it arrived), and a
        # trusted proxy names the client in X-Forwarded-For.
        self.peer = request.peer = peer2str(self.transport)
        trusted = self.factory.trusted_proxies
        if trusted:
            client = trusted.client_address(getattr(self.transport.getPeer(), "host", ""),
                                            headers.get("x-forwarded-for"))
            if client is not None:
                self.peer = request.peer = client
        try:
            # Only sessions hold slots (the capacity check); connections still
            # in the handshake have their own, smaller table (connectionMade).
            return self.factory.host.admit(AdmissionRequest(
                path=request.path, host=headers.get("host", ""), origin=headers.get("origin"),
                authorization=headers.get("authorization"),
                on_loopback=listener_is_loopback(self.transport.getHost()), tls_transport=self.transport,
                credentials=credentials,
            ))
        except Refusal as refusal:
            raise self._deny(request, refusal) from None

    def _admitted(self, identity: Any, request: ConnectionRequest) -> str | None:
        self.identity = identity
        # RFC 6455: select only a subprotocol the client offered.
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def _denied_later(self, failure: Failure, request: ConnectionRequest) -> Failure:
        if failure.check(Refusal):
            raise self._deny(request, cast(Refusal, failure.value))
        return failure  # Autobahn logs it and answers 500

    def _deny(self, request: ConnectionRequest, refusal: Refusal) -> ConnectionDeny:
        """Log and count a refusal (never the headers but Host and Origin);
        its own headers (an OAuth challenge) go out with the answer."""
        headers = request.headers
        log.info("Refused {peer} ({reason}): HTTP {code}", peer=request.peer, reason=refusal.reason,
                 code=refusal.status, host=headers.get("host"), origin=headers.get("origin"),
                 path=request.path)
        self._deny_headers = list(refusal.headers) or None
        return ConnectionDeny(refusal.status, refusal.text)

    # -- the opening handshake, before Autobahn sees it ------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        self._head: bytearray | None = bytearray()
        self._head_lines = 0
        self._init_timer: IDelayedCall | None = None
        self._stall: StallLimit | None = None  # made on the first pause: most clients keep up
        self._abort_timer: IDelayedCall | None = None
        self._writable_waiters = WriteWaiters()
        handshaking = factory.handshaking
        handshaking[self] = None
        if len(handshaking) > factory.max_handshakes:
            # Full: drop the connection that has waited longest. A real client
            # finishes its handshake within a round trip, so idle sockets are
            # what this evicts, and they cannot keep new clients out.
            oldest = next(iter(handshaking))
            del handshaking[oldest]
            factory.log_evicted(peer=oldest.peer)
            if factory.metrics is not None:
                factory.metrics.handshake_refusals.labels("handshake_evicted").inc()
            oldest.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.handshaking.pop(self, None)
        if self._admission is not None:
            self._admission = None  # its token check may end later: nobody to answer
            self.factory.admitting.discard(self)
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        if isinstance(reason.value, SSL.Error) and self.session is None:
            # A client's TLS mistake, not the server's: Autobahn would log it
            # as an error. Say what it was, with a hint for the usual one.
            detail = tls_failure_text(reason.value)
            if "http request" in detail:
                log.info("{peer} sent plain HTTP to a TLS port: the client should use wss:// (or https://)",
                         peer=self.peer)
            else:
                log.info("TLS with {peer} failed: {detail}", peer=self.peer, detail=detail)
            if self.factory.metrics is not None:
                self.factory.metrics.handshake_refusals.labels("tls").inc()
            reason = Failure(ConnectionLost(f"TLS failed: {detail}"))
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        keepalive = self._keepalive
        if keepalive is not None:
            self._heard = keepalive.tick
            if self._ping_tick is not None and len(data) == 18 and self._is_pong(data):
                return
        if self._head is not None:
            self._read_head(data)
        elif self.state != _CLOSED:
            self._dataReceived(data)
        # Closed (refused, or after the close handshake): Autobahn would keep
        # appending what the peer sends until the TCP connection ends.

    def dropConnection(self, abort: bool = False) -> None:
        """Autobahn's drop, plus a deadline: ``loseConnection`` waits until
        the peer has read everything (and, over TLS, for its close alert),
        which a peer that stopped reading never does."""
        super().dropConnection(abort)
        if not abort:
            self._abort_soon()

    def _abort_soon(self) -> None:
        """Abort the TCP connection unless it ends by itself first."""
        if self._abort_timer is None:
            grace = max(1.0, self.closeHandshakeTimeout or 0.0)  # type: ignore[attr-defined]  # Autobahn copies it from the factory in _connectionMade
            self._abort_timer = self.factory.clock.callLater(grace, self.transport.abortConnection)

    def _close_for_policy(self, reason: bytes) -> None:
        """Close 1008; the peer may never read the frame, so the TCP
        connection is aborted after the grace period in any case."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(CLOSE_POLICY_VIOLATION, reason)
        self._abort_soon()

    def _read_head(self, data: bytes) -> None:
        """Hold the HTTP request head until it is complete, with a size and
        header-count limit checked as bytes arrive.

        Autobahn searches its whole buffer again on every read, so a slowly
        growing head would cost quadratic time and unbounded memory; here each
        byte is looked at once, and Autobahn gets the head in one piece.
        """
        head = self._head
        assert head is not None
        start = max(0, len(head) - 3)
        head += data
        self._head_lines += data.count(b"\n")
        end = head.find(b"\r\n\r\n", start)
        factory = self.factory
        if end < 0:
            # Lines so far, less the request line: a lower bound of the header count.
            if len(head) > factory.max_header_bytes or self._head_lines - 1 > factory.max_headers:
                self._refuse_head(len(head))
            return
        headers = head.count(b"\n", 0, end + 4) - 2
        if end + 4 > factory.max_header_bytes or headers > factory.max_headers:
            self._refuse_head(end + 4)
            return
        self._head = None
        self._dataReceived(bytes(head))

    def _refuse_head(self, size: int) -> None:
        self._head = None
        self.factory.log_head_refused(peer=self.peer, size=size, limit=self.factory.max_header_bytes,
                                      headers=self.factory.max_headers)
        if self.factory.metrics is not None:
            self.factory.metrics.handshake_refusals.labels("header_size").inc()
        self.failHandshake("Request Header Fields Too Large", 431)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        if reason.startswith(_ORIGIN_INVALID) and code == 400:
            # Autobahn parses Origin before onConnect and answers 400 for one
            # it cannot parse (an unclosed "[", a port out of range). Admission
            # decides instead, as over HTTP: 403 (or 404, 503, 421 before it),
            # logged and counted as any refusal. Without the token check: an
            # Origin is refused before it, and there is no answer to wait for.
            request = ConnectionRequest(
                self.peer, self.http_headers, self.http_request_host, self.http_request_path,
                self.http_request_params, self.websocket_version, self.websocket_origin, [], [])
            try:
                self._admit(request, credentials=False)
            except ConnectionDeny as deny:
                reason, code = deny.reason or reason, deny.code
        # ConnectionDeny cannot carry headers: a refusal's own (an OAuth
        # challenge) were kept by _deny; RFC 6750: a 401 names its scheme.
        if responseHeaders is None:
            responseHeaders, self._deny_headers = self._deny_headers, None
        if code == 401 and responseHeaders is None:
            responseHeaders = [("WWW-Authenticate", 'Bearer realm="mcp"')]
        if code == 500:
            # Autobahn puts the text of an exception raised in onConnect in the
            # status line; it has logged it already, the client gets no details.
            reason = "Internal Server Error"
        super().failHandshake(reason, code, responseHeaders)

    def onOpen(self) -> None:
        factory = self.factory
        factory.handshaking.pop(self, None)
        self.opened_at = time.monotonic()
        self.session = factory.host.open_session(
            self._send_message, transport="websocket", identity=self.identity, peer=self.peer, flow=self)
        if factory.init_timeout:
            self._init_timer = factory.clock.callLater(factory.init_timeout, self._init_expired)
        factory.connections.add(self)
        if factory.keepalive is not None:
            self._keepalive = factory.keepalive
            factory.keepalive.watch(self)
        self._metrics = factory.metrics
        log.info("Opened {peer} (identity {identity!r})", peer=self.peer, identity=self.identity)
        self._ready_announced = False
        self.paused = False
        # Made when a pause first holds a message back (an empty deque is
        # about 600 bytes, and most connections never pause).
        self._backlog: deque[bytes] | None = None
        # Autobahn keeps the upgrade request and its answer as they were sent;
        # nothing reads them after the handshake.
        self.http_request_data = b""
        self.http_response_data = ""
        # Backpressure: the transport pauses us when its write buffer passes
        # its high-water mark, and we stop reading from this peer until it
        # drains, so a client that does not read cannot grow our memory.
        if factory.write_buffer_size is not None and hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = factory.write_buffer_size
        if getattr(self.transport, "producer", None) is not None:
            # Upgraded from twisted.web (MCPSite): the HTTP channel that read
            # the request is still registered; the connection is ours now.
            self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    # IPushProducer, driven by the transport's write buffer. Messages that
    # were already read when the pause came wait in a backlog (at most one
    # read's worth), so their answers do not pile up in the buffer either.
    def pauseProducing(self) -> None:
        self.paused = True
        if self._stall is None:
            factory = self.factory
            self._stall = StallLimit(factory.clock, factory.max_output_buffer, factory.output_stall_timeout,
                                     self.buffered_bytes, self._output_stalled)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._stall is not None:
            self._stall.stop()  # the peer read everything
        self._writable_waiters.release()
        backlog = self._backlog
        # Not once our close frame is out (a limit, a binary frame): what the
        # backlog holds would run for answers that cannot be sent.
        while backlog and not self.paused and self.state == _OPEN:
            self._receive(backlog.popleft())
        if not self.paused:
            self.transport.resumeProducing()

    # OutputFlow, for the session: handlers that await ctx.report_progress or
    # ctx.log wait here while the peer is behind.
    def when_writable(self) -> Deferred[None]:
        if not self.paused:
            return succeed(None)
        return self._writable_waiters.wait()

    def congested(self) -> bool:
        return self.paused and self.buffered_bytes() > self.factory.max_output_buffer

    def _output_stalled(self) -> None:
        """The peer stayed over the output limit for the whole stall timeout."""
        log.info("Closing {peer}: {size} bytes of output unread for {timeout:g} s", peer=self.peer,
                 size=self.buffered_bytes(), timeout=self.factory.output_stall_timeout)
        if self.factory.metrics is not None:
            self.factory.metrics.output_stalls.inc()
        self._close_for_policy(b"not reading: output limit exceeded")

    def _init_expired(self) -> None:
        self._init_timer = None
        if self.session is None or self.session.state in (State.READY, State.DRAINING):
            return  # draining: the shutdown closes it anyway
        if self.session.era is Era.STATELESS:
            return  # 2026-07-28 has no initialize to wait for
        log.info("Closing {peer}: no MCP initialize within {timeout:g} s", peer=self.peer,
                 timeout=self.factory.init_timeout)
        if self.factory.metrics is not None:
            self.factory.metrics.init_timeouts.inc()
        self._close_for_policy(b"MCP initialize not completed in time")

    def stopProducing(self) -> None:
        if self._backlog is not None:
            self._backlog.clear()

    def flush_backlog(self) -> None:
        """Hand messages read before a pause to the session now (at shutdown:
        a draining session answers their requests with -32003)."""
        while self._backlog and self.session is not None:
            self._receive(self._backlog.popleft())

    def buffered_bytes(self) -> int:
        """Bytes written to this connection that the peer has not taken yet."""
        return unsent_bytes(self.transport)

    def onSessionReady(self) -> None:
        """The MCP handshake finished; override to react (call ``super()``)."""

    def _onMessageFrameBegin(self, length: int) -> None:
        # Autobahn's Twisted adapter calls this for each data frame and it
        # calls onMessageFrameBegin: counting here instead of in overrides of
        # onMessageBegin and onMessageFrameBegin (and their super() calls)
        # costs no call of its own. A message's first frame has its type as
        # opcode, the frames after it have 0 (continuation).
        # Every fragment counts, even an empty one: each costs memory to keep
        # until the message is complete, whatever its payload size.
        if self.current_frame.opcode:
            self._fragments = fragments = 1
        else:
            self._fragments = fragments = self._fragments + 1
        if fragments > self.factory.max_fragments and not self.failedByMe:
            log.info("Closing {peer}: message in over {limit} fragments", peer=self.peer,
                     limit=self.factory.max_fragments)
            # Autobahn's own path for limits: close frame, then ignore the rest.
            self._fail_connection(CLOSE_MESSAGE_TOO_BIG, "message in too many fragments")
            return
        self.onMessageFrameBegin(length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != _OPEN:
            # Behind our close frame (a refusal, a timeout, the drain's 1001):
            # the peer may still be sending, but nothing more is run, answered
            # or logged.
            return
        if isBinary:
            log.info("Closing {peer}: binary frame", peer=self.peer)
            self.sendCloseFrame(CLOSE_UNSUPPORTED_DATA, b"MCP messages must be text frames")
            return
        if self._metrics is not None:
            self._metrics.messages_received.inc()
        if self.paused or self._backlog:
            if self._backlog is None:
                self._backlog = deque()
            self._backlog.append(payload)
            return
        # What _receive does, without a call of its own.
        session = self.session
        assert session is not None  # made in onOpen, before any message
        session.receive(payload)
        if not self._ready_announced:
            self._check_ready(session)

    def _receive(self, payload: bytes) -> None:
        session = self.session
        assert session is not None  # made in onOpen, before any message
        session.receive(payload)
        if not self._ready_announced:
            self._check_ready(session)

    def _check_ready(self, session: Session) -> None:
        """Announce the session ready (once) when it has become so."""
        if session.state is State.READY:
            self._ready_announced = True
            if self._init_timer is not None:
                self._init_timer.cancel()
                self._init_timer = None
            try:
                self.onSessionReady()
            except Exception:
                log.failure("onSessionReady raised for {peer}", peer=self.peer)

    def _send_message(self, data: bytes, related: object = None, answer: bool = False) -> None:
        # Not named _send: that is Autobahn's (it drains its send queue).
        # One connection is one stream: which request a message belongs to
        # does not matter here. A handler may finish after the peer started
        # closing; drop the answer then.
        if self.state == _OPEN:
            self.sendMessage(data)
            if self._metrics is not None:
                self._metrics.messages_sent.inc()
            if self.paused:
                assert self._stall is not None  # made by the pause
                self._stall.wrote()

    def _send_keepalive_ping(self, tick: int) -> None:
        """A ping whose payload (send time in ns, sequence number) Autobahn's
        pong handling checks and clears (``autoPingPending``), as for its own."""
        self._ping_tick = tick
        self.autoPingPendingSeq += 1
        payload = struct.pack(">QL", time.time_ns(), self.autoPingPendingSeq & 0xFFFFFFFF)
        self.autoPingPending = payload  # type: ignore[assignment]  # Autobahn declares it None
        self.transport.write(b"\x89\x0c" + payload)  # FIN + ping, 12 bytes, unmasked

    def _is_pong(self, data: bytes) -> bool:
        """Whether ``data`` is exactly the pong to our keepalive ping, read
        without Autobahn's frame machinery (about two thirds of a ping's
        cost in this process); anything else goes to Autobahn."""
        if data[0] != 0x8A or data[1] != 0x8C or self.data or self.current_frame is not None:
            return False  # not a lone masked 12-byte pong between frames
        mask = int.from_bytes(data[2:6], "big")
        payload = (int.from_bytes(data[6:], "big") ^ (mask << 64 | mask << 32 | mask)).to_bytes(12, "big")
        if payload != self.autoPingPending:
            return False
        self.autoPingPending = None
        assert self._keepalive is not None  # only our pings are awaited
        self._keepalive.answered(self)
        self.onPong(payload)
        return True

    def processControlFrame(self) -> bool:
        if self.current_frame.opcode == 10 and self.autoPingPending is not None:
            payload = b"".join(self.control_frame_data)
            if payload != self.autoPingPending:
                # RFC 6455 allows unsolicited pongs (a one-way heartbeat);
                # Autobahn would log a warning for each while our ping is
                # pending, as many lines as the peer cares to send.
                self.control_frame_data = None
                self._onPong(payload)
                return True
        return super().processControlFrame()

    def onAutoPong(self, ping_sent: int, ping_seq: int, pong_received: int, pong_rtt: int,
                   payload: bytes) -> None:
        if self._keepalive is not None:
            self._keepalive.answered(self)

    def onAutoPingTimeout(self) -> None:
        log.info("Dropping {peer}: no answer to WebSocket ping", peer=self.peer)
        if self.factory.metrics is not None:
            self.factory.metrics.ping_timeouts.inc()
        super().onAutoPingTimeout()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._init_timer is not None and self._init_timer.active():
            self._init_timer.cancel()
        self._init_timer = None
        if self._stall is not None:
            self._stall.stop()
        if self.session is None:
            return  # the upgrade never finished: a refusal, already logged
        self.session.close(f"WebSocket closed ({code}): {reason}")
        self.factory.host.session_closed(self.session)
        self._writable_waiters.release()  # handlers carry on; what they send now is dropped
        self.factory.connections.discard(self)
        # When we closed, record the code we sent (1001 at shutdown, 1008
        # ...), not whatever the peer answered or 1006 if it never did.
        if self.closedByMe and self.localCloseCode is not None:
            code = self.localCloseCode
        if self.factory.metrics is not None:
            self.factory.metrics.connection_closed(code)
        duration = time.monotonic() - self.opened_at if self.opened_at else 0.0
        log.info("Closed {peer} code={code} clean={clean} after {duration:.1f}s",
                 peer=self.peer, code=code, clean=wasClean, duration=duration, reason=reason)


class MCPWebSocketServerFactory(FastFactoryMixin, WebSocketServerFactory):
    """Serves an ``MCPServer`` app over WebSocket; listen on any endpoint.

    ``connections`` holds the open connections (those past the upgrade).
    The app, limits, admission, live sessions and drain state live in a
    ``SessionHost`` (``host``), made from these arguments or given, so that
    WebSocket and Streamable HTTP can serve one app with one set of limits.
    """

    protocol = MCPWebSocketServerProtocol  # type: ignore[assignment]  # Autobahn's factory leaves Twisted's Factory[P] unparameterized
    host: SessionHost  # not Autobahn's URL host, which only its client factories use

    def __init__(
        self,
        app: MCPServer | None = None,
        url: str | None = None,
        *,
        host: SessionHost | None = None,
        path: str | None = "/mcp",
        allowed_origins: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        max_in_flight: int = 64,
        handler_timeout: float | None = None,
        open_handshake_timeout: float = 5.0,
        close_handshake_timeout: float = 1.0,
        max_connections: int = DEFAULT_MAX_SESSIONS,
        max_handshakes: int = 256,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = 100,
        init_timeout: float = 20.0,
        max_fragments: int = 1024,
        max_batch_size: int = 64,
        max_output_buffer: int = DEFAULT_MAX_OUTPUT_BUFFER,
        output_stall_timeout: float = 30.0,
        write_buffer_size: int | None = None,
        auth: Authenticator | None = None,
        metrics: Metrics | None = None,
        clock: IReactorTime | None = None,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        """
        :param host: serve this host's app with its limits and admission; the
            arguments that describe those (``path`` to ``max_batch_size``,
            ``auth``, ``metrics``, ``clock``) are then not used.
        :param path: the only request path upgraded (``None``: any path).
        :param allowed_origins: browser origins allowed besides the server's
            own (see ``OriginPolicy``).
        :param allowed_hosts: ``Host`` values accepted on a loopback listener
            besides loopback names (e.g. a proxy's name for this server).
        :param max_message_size: bytes; a larger message closes with 1009.
        :param ping_interval, ping_timeout: seconds; WebSocket ping keeps
            idle connections alive and drops dead peers (0 turns it off).
        :param max_in_flight: concurrent requests per session.
        :param handler_timeout: seconds a handler may run before it is
            cancelled and the client gets an error (``None``: no limit).
        :param max_connections: MCP sessions (upgraded connections); more get
            HTTP 503 (0: no limit).
        :param max_handshakes: connections still in the HTTP handshake; when
            full, the one that has waited longest is dropped.
        :param max_header_bytes, max_headers: limits of the upgrade request's
            head; a larger one gets HTTP 431 and is closed.
        :param init_timeout: seconds a session has to finish the MCP handshake
            (``initialize`` and ``notifications/initialized``) before it is
            closed with 1008 (0: no limit).
        :param max_fragments: frames one message may arrive in; more closes 1009.
        :param max_batch_size: messages in one JSON-RPC batch (2025-03-26);
            a larger batch gets one error answer.
        :param max_output_buffer: bytes of unread output per connection over
            which progress and log notifications are dropped rather than queued.
        :param output_stall_timeout: seconds a peer may stay over
            ``max_output_buffer`` before it is closed with 1008.
        :param write_buffer_size: bytes of unsent output per connection above
            which we stop reading from that peer until it catches up (TCP
            listeners; ``None`` keeps Twisted's 64 KiB).
        :param auth: require ``Authorization: Bearer`` tokens (HTTP 401 otherwise): static
            ones (``auth.TokenAuthenticator``) or OAuth access tokens (``oauth.OAuthResourceServer``).
        :param metrics: count connections and requests (see ``metrics_site``).
        :param trusted_proxies: proxies whose ``X-Forwarded-For`` names the
            client in logs (see ``mcp_twisted.proxy``).
        """
        super().__init__(url, server=None)  # type: ignore[no-untyped-call]  # Autobahn's, unannotated
        check_timer_settings(
            ping_interval=ping_interval, ping_timeout=ping_timeout,
            open_handshake_timeout=open_handshake_timeout, close_handshake_timeout=close_handshake_timeout,
        )
        if host is None:
            if app is None:
                raise TypeError("MCPServerFactory needs an app or a host")
            host = SessionHost(
                app,
                admission=Admission(path=path, allowed_origins=allowed_origins, allowed_hosts=allowed_hosts,
                                    auth=auth),
                limits=Limits(max_sessions=max_connections, max_in_flight=max_in_flight,
                              handler_timeout=handler_timeout, max_message_size=max_message_size,
                              max_batch_size=max_batch_size),
                metrics=metrics, clock=clock, client_request_timeout=app.client_request_timeout,
            )
        self.host = host
        self.trusted_proxies = trusted_proxies if trusted_proxies is not None else TrustedProxies()
        self.write_buffer_size = write_buffer_size
        self.max_handshakes = max_handshakes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.init_timeout = init_timeout
        self.max_fragments = max_fragments
        self.max_output_buffer = max_output_buffer
        self.output_stall_timeout = output_stall_timeout
        # Connections in the HTTP handshake, oldest first (a dict keeps order),
        # and those of them whose upgrade waits for its token check.
        self.handshaking: dict[MCPWebSocketServerProtocol, None] = {}
        self.admitting: set[MCPWebSocketServerProtocol] = set()
        self.log_evicted = RepeatedEventLog(
            log, self.clock, "Dropped {count} connection(s) idle in the handshake ({peer} last): "
            "the handshake table is full")
        self.log_head_refused = RepeatedEventLog(
            log, self.clock, "Refused {count} upgrade request(s) with an oversize head ({peer} last: "
            "{size} bytes; limits {limit} bytes, {headers} headers): HTTP 431")
        if host.metrics is not None:
            host.metrics.factory = self
        self.connections: set[MCPWebSocketServerProtocol] = set()
        self.keepalive = Keepalive(host.clock, ping_interval, ping_timeout) if ping_interval else None
        self.setProtocolOptions(
            webStatus=False,
            allowNullOrigin=True,  # our OriginPolicy decides (P1: Autobahn would flip it)
            maxMessagePayloadSize=host.limits.max_message_size,
            maxFramePayloadSize=host.limits.max_message_size,
            failByDrop=False,  # send 1007/1009 close frames instead of dropping TCP
            # Pings are the Keepalive's, not Autobahn's.
            openHandshakeTimeout=open_handshake_timeout,
            closeHandshakeTimeout=close_handshake_timeout,
        )

    def stopFactory(self) -> None:
        super().stopFactory()  # type: ignore[no-untyped-call]  # Autobahn's, unannotated
        if self.keepalive is not None:
            self.keepalive.stop()

    def refuse_pending_upgrades(self) -> None:
        """Answer 503 now to every upgrade whose token is still being checked.

        For the shutdown, once the drain has begun: the check could only end
        in a 503 (the drain is checked before the token, and again after it),
        so its client need not wait for it, nor go unanswered when the
        process exits first.
        """
        draining = Refusal(503, "draining", "Service Unavailable: shutting down")
        for connection in list(self.admitting):
            connection.refuse_pending(draining)

    # What the host holds, under the names this factory always had.
    @property
    def app(self) -> MCPServer:
        # SessionHost takes any SessionHandler; a factory's host serves an MCPServer.
        return cast(MCPServer, self.host.app)

    @property
    def clock(self) -> IReactorTime:
        return self.host.clock

    @property
    def metrics(self) -> Metrics | None:
        return self.host.metrics

    @property
    def draining(self) -> bool:
        """True once the service started shutting down: /healthz says 503 and
        new upgrades are refused with 503."""
        return self.host.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.host.draining = value


# The names these classes had before other transports came.
MCPServerProtocol = MCPWebSocketServerProtocol
MCPServerFactory = MCPWebSocketServerFactory
