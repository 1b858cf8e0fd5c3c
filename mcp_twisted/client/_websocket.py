"""The client's WebSocket transport and the reconnecting service around it."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.application.internet import ClientService
from twisted.internet import endpoints, ssl
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcp_twisted._autobahn import CLOSE_NORMAL, SUBPROTOCOL, FastPathMixin, check_timer_settings
from mcp_twisted.auth import load_certificates
from mcp_twisted.client._api import ConnectionFailed, MCPClient
from mcp_twisted.session import Role, Session

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


class MCPClientProtocol(FastPathMixin, WebSocketClientProtocol):
    """One WebSocket connection carrying one client session."""

    factory: MCPClientFactory
    session: Session | None = None
    failure_reason: str | None = None
    ready = False

    def onOpen(self) -> None:
        client = self.factory.client
        self.session = Session(
            self._send, role=Role.CLIENT, handler=client, clock=client.clock,
            request_timeout=client.request_timeout,
        )
        self.factory.current = self
        client.start_session(self.session).addCallbacks(self._ready, self._initialize_failed)

    def _ready(self, result: dict[str, Any]) -> None:
        self.ready = True
        self.factory.on_session(self)

    def _initialize_failed(self, failure: Failure) -> None:
        self.failure_reason = f"initialize failed: {failure.getErrorMessage()}"
        log.warn("MCP handshake with {url} failed: {error}", url=self.factory.url,
                 error=failure.getErrorMessage())
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendClose(CLOSE_NORMAL)

    def _send(self, data: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is not None:
            self.session.receive(payload)

    def connectionLost(self, reason: Failure) -> None:
        # TLS failures reach onClose only as 1006; the real cause is here.
        if self.session is None and self.failure_reason is None:
            self.failure_reason = _describe_failure(reason, self.factory.host)
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.close(f"WebSocket closed ({code}): {reason}")
        if self.failure_reason is None and not self.ready:  # a session that worked is no failure
            self.failure_reason = reason or f"closed with code {code}"
        if self.factory.current is self:
            self.factory.current = None
        self.factory.on_closed(self)


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
    """Builds a fresh protocol per attempt, all feeding the same ``MCPClient``."""

    protocol = MCPClientProtocol

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
        super().__init__(url, protocols=[SUBPROTOCOL], headers=headers or {})
        check_timer_settings(ping_interval=ping_interval, ping_timeout=ping_timeout)
        self.client = client
        self.current: MCPClientProtocol | None = None
        self.on_session: Callable[[MCPClientProtocol], object] = lambda p: None
        self.on_closed: Callable[[MCPClientProtocol], object] = lambda p: None
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
class _ReportingEndpoint:
    """Passes connection attempts through, reporting why one failed
    (``ClientService`` swallows the reason)."""

    def __init__(self, endpoint: IStreamClientEndpoint, on_failure: Callable[[Failure], object]) -> None:
        self.endpoint = endpoint
        self.on_failure = on_failure

    def connect(self, factory: Any) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            self.on_failure(failure)
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class MCPClientService(ClientService):
    """Keeps an MCP session to ``url`` alive: connect, initialize, reconnect.

    Built on Twisted's ``ClientService``, with one change that matters: a
    connection counts as a success only once the MCP handshake finished. A
    server that refuses the WebSocket upgrade (401, 403, 404, a wrong
    subprotocol) or fails ``initialize`` is retried with growing delays,
    where ``ClientService`` alone would see a working TCP connection and retry
    at the initial delay forever.

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
        self.factory.on_session = self._session_up
        self.factory.on_closed = self._connection_closed
        self.backoff = backoff or backoff_policy()
        self.max_attempts = max_attempts
        self.close_timeout = close_timeout
        self.failures = 0
        self.last_error: str | None = None
        self._protocol: MCPClientProtocol | None = None
        if endpoint is None:
            endpoint = endpoint_for_url(reactor, url, tls_ca=tls_ca, tls_client_cert=tls_client_cert,
                                        tls_client_key=tls_client_key)
        super().__init__(_ReportingEndpoint(endpoint, self._connect_failed), self.factory,
                         retryPolicy=self._retry_delay, clock=self.clock)

    def startService(self) -> None:
        """Start connecting: a fresh series of attempts, even after a give-up."""
        if self.running:
            return
        self.failures = 0
        self.last_error = None
        self.client.retrying()
        super().startService()

    def when_ready(self) -> Deferred[MCPClient]:
        """Fires with the ``MCPClient`` once connected and initialized."""
        return self.client.when_ready()

    whenReady = when_ready

    def _session_up(self, protocol: MCPClientProtocol) -> None:
        self.failures = 0
        self.last_error = None

    def _connect_failed(self, failure: Failure) -> None:
        # No protocol was built (refused, unreachable, DNS): the reason is here.
        self.last_error = failure.getErrorMessage()
        log.info("Connection to {url} failed: {error}", url=self.factory.url, error=self.last_error)

    def _connection_closed(self, protocol: MCPClientProtocol) -> None:
        if protocol.failure_reason is not None:
            self.last_error = protocol.failure_reason
            log.info("Connection to {url} failed: {error}", url=self.factory.url, error=self.last_error)

    def _retry_delay(self, attempt: int) -> float:
        # ClientService resets its own count at every TCP connect, so count here:
        # every call is one failed attempt or one lost session.
        self.failures += 1
        if self.max_attempts is not None and self.failures >= self.max_attempts:
            self.clock.callLater(0, self._give_up)
            return 3600.0
        return self.backoff(self.failures)

    def _give_up(self) -> None:
        error = ConnectionFailed(
            f"Gave up on {self.factory.url} after {self.failures} failed attempts"
            + (f": {self.last_error}" if self.last_error else "")
        )
        log.warn("{error}", error=str(error))
        self.client.fail_waiters(error)
        self.stopService()

    @inlineCallbacks
    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Close the session cleanly (1000) and stop reconnecting."""
        protocol = self.factory.current
        if protocol is not None and protocol.state == WebSocketProtocol.STATE_OPEN:
            protocol.sendClose(CLOSE_NORMAL)
            closed = DeferredList([protocol.is_closed], consumeErrors=True)
            closed.addTimeout(self.close_timeout, self.clock)
            with contextlib.suppress(Exception):  # a timeout: the TCP close below follows
                yield closed
        if self.running:
            yield super().stopService()
        self.client.fail_waiters(ConnectionFailed(f"The client for {self.factory.url} was stopped"))
