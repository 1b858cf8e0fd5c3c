"""The client's WebSocket transport and the reconnecting service around it.

``MCPClientService`` is Twisted's ``ClientService`` for which a connection is
an MCP session: its endpoint (``_SessionEndpoint``) reports a connection only
once the WebSocket upgrade and the MCP handshake are done, so a refused
upgrade or a failed ``initialize`` is a failed attempt like a refused TCP
connection, and ``ClientService`` grows the backoff and counts it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Generator
from typing import Any, cast
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints, ssl
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcp_twisted._autobahn import CLOSE_NORMAL, SUBPROTOCOL, FastPathMixin, check_timer_settings
from mcp_twisted.auth import load_certificates
from mcp_twisted.client._api import ConnectionFailed, MCPClient
from mcp_twisted.client._lifecycle import TRANSITIONS, ConnectionEvent, ConnectionState, advance
from mcp_twisted.session import ConnectionLost, Role, Session

log = Logger()


def backoff_policy(
    initial_delay: float = 0.5,
    max_delay: float = 30.0,
    factor: float = 2.0,
    jitter: bool = True,
    random_fraction: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """Delay before retry ``attempt`` (1 for the first retry).

    Exponential growth capped at ``max_delay``; with ``jitter`` the delay is
    drawn uniformly from ``[0, capped)`` ("full jitter"), which spreads out
    clients that lost the same server at the same moment.
    """

    def policy(attempt: int) -> float:
        capped = min(max_delay, initial_delay * factor ** min(attempt - 1, 64))
        return capped * random_fraction() if jitter else capped

    return policy


class MCPClientProtocol(FastPathMixin, WebSocketClientProtocol):  # type: ignore[misc]  # Autobahn's two bases define peer and _transport_details differently
    """One WebSocket connection carrying one client session.

    ``connection_state`` follows ``_lifecycle.TRANSITIONS``. ``initialized``
    fires with this protocol once the session is initialized (READY), and
    fails with ``ConnectionFailed`` (saying why) if the connection ends
    before; cancelling it gives the connection up.
    """

    factory: MCPClientFactory
    session: Session | None = None

    def __init__(self) -> None:
        super().__init__()
        self.connection_state = ConnectionState.CONNECTING
        self.failure_reason: str | None = None  # why it never became a session
        self.initialized: Deferred[MCPClientProtocol] = Deferred(self._abandon)
        self.lost_reason: Failure | None = None  # set when the connection is gone
        self._closed_waiters: list[Deferred[None]] = []

    def _advance(self, event: ConnectionEvent) -> None:
        self.connection_state = advance(self.connection_state, event)

    @property
    def closable(self) -> bool:
        """Whether ``close()`` is possible now: upgraded, and not closing yet."""
        return (self.connection_state, ConnectionEvent.CLOSE) in TRANSITIONS

    def connectionMade(self) -> None:
        self.factory.current = self
        super().connectionMade()

    def onOpen(self) -> None:
        self._advance(ConnectionEvent.OPENED)
        client = self.factory.client
        self.session = Session(
            self._send_message, role=Role.CLIENT, handler=client, clock=client.clock,
            request_timeout=client.request_timeout,
        )
        client.handshake(self.session).addCallbacks(self._initialized, self._rejected)

    def _initialized(self, result: dict[str, Any]) -> None:
        self._advance(ConnectionEvent.INITIALIZED)
        # The service takes the session before the client wakes its waiters:
        # code woken by when_ready() may stop the service at once.
        self.initialized.callback(self)
        assert self.session is not None  # made in onOpen, before the handshake
        self.factory.client.attach(self.session)

    def _rejected(self, failure: Failure) -> None:
        if failure.check(ConnectionLost):
            return  # the session closed with the connection: LOST says why
        self._advance(ConnectionEvent.REJECTED)
        self.failure_reason = f"initialize failed: {failure.getErrorMessage()}"
        log.warn("MCP handshake with {url} failed: {error}", url=self.factory.url,
                 error=failure.getErrorMessage())
        self._close_session()

    def close(self) -> Deferred[None]:
        """Close with 1000: requests in flight fail at once. Fires when the
        connection is gone."""
        self._advance(ConnectionEvent.CLOSE)
        self._close_session()
        return self.when_closed()

    def _close_session(self) -> None:
        # Closed first, so that nothing the server still sends is acted on.
        assert self.session is not None  # only called once upgraded: onOpen made it
        self.session.close("closed by the client")
        self.sendClose(CLOSE_NORMAL)

    def _abandon(self, initialized: Deferred[MCPClientProtocol]) -> None:
        """The attempt is no longer wanted (the service stops before the session is up)."""
        if self.closable:
            self.close()
        else:
            self.dropConnection(abort=True)

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is gone (``lost_reason`` says how)."""
        d: Deferred[None] = Deferred()
        if self.lost_reason is not None:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def _send_message(self, data: bytes, related: object = None, answer: bool = False) -> None:
        # Not named _send: that is Autobahn's (it drains its send queue).
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is not None:
            self.session.receive(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.close(f"WebSocket closed ({code}): {reason}")
        if self.failure_reason is None and not self.initialized.called:
            self.failure_reason = reason or f"closed with code {code}"

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # TLS failures reach onClose only as 1006; the real cause is here.
        if self.connection_state is ConnectionState.CONNECTING and self.failure_reason is None:
            self.failure_reason = _describe_failure(reason, self.factory.host)
        super().connectionLost(reason)  # Autobahn calls onClose
        self._advance(ConnectionEvent.LOST)
        if self.factory.current is self:
            self.factory.current = None
        if not self.initialized.called:
            self.initialized.errback(ConnectionFailed(self.failure_reason or "connection lost"))
        self.lost_reason = reason
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _describe_failure(reason: Failure, host: str) -> str | None:
    """A readable cause for a connection lost before the WebSocket opened
    (TLS problems reach ``onClose`` only as an unclean close, code 1006)."""
    error = reason.value
    if isinstance(error, VerificationError):
        return f"TLS verification failed: the server's certificate is not valid for {host!r}"
    if isinstance(error, SSL.Error):
        # args[0]: OpenSSL's error queue, a list of (library, function, reason).
        queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
        reasons = "; ".join(str(item[-1]) for item in queue if item) or str(error)
        if "certificate verify failed" in reasons:
            return (f"TLS verification failed: {reasons} (is the server's certificate issued by a "
                    "trusted CA? see tls_ca / --cafile)")
        if "certificate required" in reasons:
            return f"TLS handshake failed: {reasons} (the server wants a client certificate)"
        return f"TLS handshake failed: {reasons}"
    return None


class MCPClientFactory(WebSocketClientFactory):
    """Builds a fresh protocol per attempt, all feeding the same ``MCPClient``.

    ``current`` is the connection being attempted or in use, if any.
    """

    protocol = MCPClientProtocol  # type: ignore[assignment]  # Autobahn's factory leaves Twisted's Factory[P] unparameterized

    def __init__(
        self,
        client: MCPClient,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        max_message_size: int = 4 * 1024 * 1024,
    ) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], headers=headers or {})  # type: ignore[no-untyped-call]  # Autobahn's, unannotated
        check_timer_settings(ping_interval=ping_interval, ping_timeout=ping_timeout)
        self.client = client
        self.current: MCPClientProtocol | None = None
        self.setProtocolOptions(
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
        )


def endpoint_for_url(
    reactor: Any,
    url: str,
    *,
    tls_ca: str | None = None,
    tls_client_cert: str | None = None,
    tls_client_key: str | None = None,
) -> IStreamClientEndpoint:
    """A client endpoint for a ``ws://`` or ``wss://`` URL.

    ``wss://`` verifies the server's certificate and hostname (service-identity):
    against ``tls_ca`` (a PEM file of trusted CAs) or the platform's trust store.
    ``tls_client_cert``/``tls_client_key`` (PEM) present a client certificate.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"Not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    endpoint = endpoints.HostnameEndpoint(reactor, parts.hostname, port)
    if not secure:
        return endpoint
    trust_root: Any = None
    if tls_ca is not None:
        # A bundle: trust every CA in the file, not just the first one.
        trust_root = ssl.trustRootFromCertificates(load_certificates(tls_ca))
    client_certificate = None
    extra: dict[str, Any] = {}
    if tls_client_cert is not None:
        with open(tls_client_cert, "rb") as f:
            pem = f.read()
        if tls_client_key is not None:
            with open(tls_client_key, "rb") as f:
                pem = f.read() + b"\n" + pem
        client_certificate = ssl.PrivateCertificate.loadPEM(pem)
        # The file may hold the chain after the client's own certificate:
        # send the intermediates too, or a server trusting only the root refuses.
        chain = load_certificates(tls_client_cert)[1:]
        if chain:
            extra["extraCertChain"] = [certificate.original for certificate in chain]
    options = ssl.optionsForClientTLS(
        parts.hostname, trustRoot=trust_root, clientCertificate=client_certificate,
        extraCertificateOptions=extra or None,
    )
    return endpoints.wrapClientTLS(options, endpoint)


@implementer(IStreamClientEndpoint)
class _SessionEndpoint:
    """``MCPClientService``'s endpoint: the connections it makes are sessions.

    ``connect`` connects ``endpoint`` with the MCP factory and fires once the
    WebSocket upgrade and the MCP handshake are done, or fails with why not
    (refused, TLS, HTTP 401, a failed ``initialize``): to ``ClientService``
    all of these are failed attempts. For each session, ``ClientService`` is
    given a stand-in protocol on the session's transport (stopping the
    service closes it) that is told when the session's connection is lost
    (the service reconnects).

    Not ``ClientService(prepareConnection=...)``: ClientService leaves a
    connection whose preparation failed open, and has no transition for its
    ``connectionLost`` in any state it can be in by then (Connecting,
    Waiting, Stopped), so closing it logs automat's ``NoTransition`` as an
    unhandled error (Twisted 26.10). Here it only ever sees sessions.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, service: MCPClientService) -> None:
        self.endpoint = endpoint
        self.service = service

    def __repr__(self) -> str:  # ClientService logs "Scheduling retry 1 to connect <this> in ..."
        return f"<MCP session to {self.service.factory.url}>"

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt = self.endpoint.connect(self.service.factory)
        # The endpoint says IProtocol; the service's factory builds MCPClientProtocols.
        session = attempt.addCallback(lambda protocol: cast(MCPClientProtocol, protocol).initialized)
        return session.addCallbacks(self._session_up, self.service._attempt_failed, callbackArgs=(factory,))

    def _session_up(self, protocol: MCPClientProtocol, factory: IProtocolFactory) -> IProtocol:
        stand_in = factory.buildProtocol(protocol.transport.getPeer())
        assert stand_in is not None  # ClientService's factory always builds one
        stand_in.makeConnection(protocol.transport)

        def lost(_: None) -> None:
            assert protocol.lost_reason is not None  # set before when_closed() fires
            stand_in.connectionLost(protocol.lost_reason)

        ended = protocol.when_closed().addCallback(lost)
        ended.addCallback(lambda _: self.service._session_ended())
        self.service._session_up()
        return stand_in


class MCPClientService(ClientService):
    """Keeps an MCP session to ``url`` alive: connect, initialize, reconnect.

    Twisted's ``ClientService``, with one change that matters: a connection
    counts as a success only once the MCP handshake finished. A server that
    refuses the WebSocket upgrade (401, 403, 404, a wrong subprotocol) or
    fails ``initialize`` is retried with growing delays, where
    ``ClientService`` alone would see a working TCP connection and retry at
    the initial delay forever.

    :param max_attempts: consecutive failed attempts before giving up:
        ``when_ready()`` then fails with ``ConnectionFailed``. ``None``: never.
    :param backoff: ``attempt -> seconds``; see ``backoff_policy``.
    Other keyword arguments go to ``MCPClient`` (handlers, callbacks,
    ``request_timeout``, ``wait_for_connection``).
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        tls_ca: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        backoff: Callable[[int], float] | None = None,
        max_attempts: int | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        close_timeout: float = 2.0,
        clock: IReactorTime | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        **client_options: Any,
    ) -> None:
        self.clock: IReactorTime = clock or reactor
        self.client = MCPClient(self.clock, **client_options)
        self.factory = MCPClientFactory(
            self.client, url, headers=headers, ping_interval=ping_interval, ping_timeout=ping_timeout
        )
        self.backoff = backoff or backoff_policy()
        self.max_attempts = max_attempts
        self.close_timeout = close_timeout
        self.failures = 0
        self.last_error: str | None = None
        if endpoint is None:
            endpoint = endpoint_for_url(reactor, url, tls_ca=tls_ca, tls_client_cert=tls_client_cert,
                                        tls_client_key=tls_client_key)
        super().__init__(_SessionEndpoint(endpoint, self), Factory.forProtocol(Protocol),
                         retryPolicy=self._retry_delay, clock=self.clock)

    def startService(self) -> None:
        """Start connecting: a fresh series of attempts, even after a give-up."""
        if self.running:
            return
        self.failures = 0
        self.last_error = None
        self.client.retrying()
        super().startService()
        # An endpoint may fail at once, inside startService: that attempt counts too.
        self._watch(failed=self.failures)

    def when_ready(self) -> Deferred[MCPClient]:
        """Fires with the ``MCPClient`` once connected and initialized."""
        return self.client.when_ready()

    whenReady = when_ready

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[MCPClientProtocol]:  # type: ignore[override]  # Twisted's Deferred is invariant: this is still a Deferred of an IProtocol
        """The protocol of the session that is up, or of the next one
        (``ClientService`` itself holds a stand-in for it)."""

        def current(_: IProtocol) -> MCPClientProtocol:
            protocol = self.factory.current
            assert protocol is not None  # ClientService is connected: the session's connection is up
            return protocol

        return super().whenConnected(failAfterFailures).addCallback(current)

    def _watch(self, failed: int = 0) -> None:
        """Give up after ``max_attempts`` failed attempts in a row (``failed`` of them made)."""
        if self.max_attempts is None:
            return
        if failed >= self.max_attempts:
            self._give_up()
            return
        super().whenConnected(failAfterFailures=self.max_attempts - failed).addErrback(self._attempts_failed)

    def _attempts_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # the service was stopped
        # This fires inside ClientService's state machine, which cannot be
        # re-entered with stopService(): give up once it has settled.
        self.clock.callLater(0, self._give_up)

    def _give_up(self) -> None:
        error = ConnectionFailed(
            f"Gave up on {self.factory.url} after {self.max_attempts} failed attempts"
            + (f": {self.last_error}" if self.last_error else "")
        )
        log.warn("{error}", error=str(error))
        self._stop(error)

    def _attempt_failed(self, failure: Failure) -> Failure:
        if not failure.check(CancelledError):  # cancelled: the service is stopping
            self.last_error = failure.getErrorMessage()
            log.info("Connection to {url} failed: {error}", url=self.factory.url, error=self.last_error)
        return failure

    def _session_up(self) -> None:
        self.failures = 0
        self.last_error = None

    def _session_ended(self) -> None:
        # ClientService is waiting to reconnect by now: count the attempts afresh.
        self._watch()

    def _retry_delay(self, attempt: int) -> float:
        # Counted here rather than ClientService's ``attempt``: that one goes
        # on across a stop and start, and a restart starts a fresh series.
        self.failures += 1
        return self.backoff(self.failures)

    def stopService(self) -> Deferred[None]:
        """Close the session cleanly (1000) and stop reconnecting."""
        return self._stop(ConnectionFailed(f"The client for {self.factory.url} was stopped"))

    @inlineCallbacks
    def _stop(self, error: ConnectionFailed) -> Generator[Deferred[Any], Any, None]:
        protocol = self.factory.current
        if protocol is not None and protocol.connection_state is ConnectionState.READY:
            # Closed and answered before ClientService drops the TCP connection.
            yield self._wait_closed(protocol.close())
        if self.running:
            yield super().stopService()  # cancels an attempt under way (see _abandon)
        if protocol is not None:
            yield self._wait_closed(protocol.when_closed())
        # Nobody waits for a session that will not come.
        self.client.fail_waiters(error)

    @inlineCallbacks
    def _wait_closed(self, closed: Deferred[None]) -> Generator[Deferred[Any], Any, None]:
        """Wait for ``closed``, ``close_timeout`` seconds at most."""
        with contextlib.suppress(defer.TimeoutError):
            yield closed.addTimeout(self.close_timeout, self.clock)
