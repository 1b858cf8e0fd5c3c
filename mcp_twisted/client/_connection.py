"""What every client connection shares, whatever carries it.

A connection (a WebSocket, a Streamable HTTP conversation, a child process
on stdio) brings up one client ``Session``, opens it through the
``MCPClient`` (era detection, then ``initialize`` or ``server/discover``)
and reports: ``initialized`` fires once the session is in use, and fails
with ``ConnectionFailed`` saying why when the connection ends before.
Its state follows ``_lifecycle.TRANSITIONS``; each transport adds how bytes
move and how the connection ends (``_end_transport``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import address, ssl
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcp_twisted.auth import load_certificates
from mcp_twisted.client._api import ConnectionFailed, MCPClient
from mcp_twisted.client._lifecycle import TRANSITIONS, ConnectionEvent, ConnectionState, advance
from mcp_twisted.session import ConnectionLost, Role, Send, Session

__all__ = [
    "ConnectionHandle", "Connector", "SessionConnection", "describe_tls_failure", "origin_of", "tls_options",
]

log = Logger()


class SessionConnection:
    """The session-carrying part of a client connection (a mixin).

    Subclasses call ``_init_connection`` from their constructor,
    ``_open_session`` once bytes can flow (OPENED), ``_connection_gone`` when
    the connection is gone (LOST), and implement ``_end_transport``.
    """

    client: MCPClient
    era_key: str  # what the era cache knows the server by
    target: str  # for messages: the URL or the command
    session: Session | None = None

    def _init_connection(self) -> None:
        self.connection_state = ConnectionState.CONNECTING
        self.failure_reason: str | None = None  # why it never became a session
        self.initialized: Deferred[Any] = Deferred(self._abandon)
        self.lost_reason: Failure | None = None  # set when the connection is gone
        self._closed_waiters: list[Deferred[None]] = []

    def _advance(self, event: ConnectionEvent) -> None:
        self.connection_state = advance(self.connection_state, event)

    @property
    def closable(self) -> bool:
        """Whether ``close()`` is possible now: open, and not closing yet."""
        return (self.connection_state, ConnectionEvent.CLOSE) in TRANSITIONS

    def _open_session(self, send: Send) -> None:
        self._advance(ConnectionEvent.OPENED)
        client = self.client
        self.session = Session(send, role=Role.CLIENT, handler=client, clock=client.clock,
                               request_timeout=client.request_timeout)
        client.open_session(self.session, self.era_key).addCallbacks(self._initialized, self._rejected)

    def _initialized(self, result: dict[str, Any]) -> None:
        self._advance(ConnectionEvent.INITIALIZED)
        # The service takes the session before the client wakes its waiters:
        # code woken by when_ready() may stop the service at once.
        self.initialized.callback(self)
        assert self.session is not None  # made in _open_session, before the handshake
        self.client.attach(self.session)

    def _rejected(self, failure: Failure) -> None:
        if failure.check(ConnectionLost):
            return  # the session closed with the connection: LOST says why
        self._advance(ConnectionEvent.REJECTED)
        self.failure_reason = f"initialize failed: {failure.getErrorMessage()}"
        log.warn("MCP handshake with {target} failed: {error}", target=self.target,
                 error=failure.getErrorMessage())
        self._close_session()

    def close(self) -> Deferred[None]:
        """Close: requests in flight fail at once. Fires when the connection is gone."""
        self._advance(ConnectionEvent.CLOSE)
        self._close_session()
        return self.when_closed()

    def _close_session(self) -> None:
        # Closed first, so that nothing the server still sends is acted on.
        assert self.session is not None  # only called once open: _open_session made it
        self.session.close("closed by the client")
        self._end_transport()

    def _end_transport(self) -> None:
        """End the connection cleanly; ``_connection_gone`` follows."""
        raise NotImplementedError

    def _drop(self) -> None:
        """End a connection that is not open yet, at once."""
        raise NotImplementedError

    def _abandon(self, initialized: Deferred[Any]) -> None:
        """The attempt is no longer wanted (the service stops before the session is up)."""
        if self.closable:
            self.close()
        else:
            self._drop()

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is gone (``lost_reason`` says how)."""
        d: Deferred[None] = Deferred()
        if self.lost_reason is not None:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def _connection_gone(self, reason: Failure) -> None:
        if self.session is not None:
            self.session.close(self.failure_reason or "connection lost")
        self._advance(ConnectionEvent.LOST)
        if not self.initialized.called:
            self.initialized.errback(ConnectionFailed(self.failure_reason or "connection lost"))
        self.lost_reason = reason
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)


class ConnectionHandle:
    """A connection seen as a transport, for ``ClientService``'s stand-in
    protocol (which only ever loses it): losing it closes the connection."""

    def __init__(self, close: Callable[[], object], peer: str) -> None:
        self._close = close
        self._address = address.UNIXAddress(peer)

    def loseConnection(self) -> None:
        self._close()

    def getPeer(self) -> address.UNIXAddress:
        return self._address

    def getHost(self) -> address.UNIXAddress:
        return self._address


class Connector:
    """What ``MCPClientService`` connects through: ``connect()`` starts a
    connection and fires with it once its session is in use; ``current`` is
    the connection being attempted or in use."""

    target: str
    current: Any = None

    def connect(self) -> Deferred[Any]:
        raise NotImplementedError

    def _track(self, connection: SessionConnection) -> Deferred[Any]:
        self.current = connection

        def gone(_: None) -> None:
            if self.current is connection:
                self.current = None

        connection.when_closed().addCallback(gone)
        return connection.initialized

    def handle(self, connection: Any) -> Any:
        """The transport ``ClientService`` holds for ``connection``."""
        return ConnectionHandle(lambda: connection.close() if connection.closable else None, self.target)


def origin_of(url: str) -> str:
    """``scheme://host:port``: what the era cache knows a server by."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def tls_options(
    hostname: str,
    tls_ca: str | None = None,
    tls_client_cert: str | None = None,
    tls_client_key: str | None = None,
) -> Any:
    """Client TLS options: the server's certificate and hostname verified
    (service-identity) against ``tls_ca`` (a PEM file of trusted CAs) or the
    platform's trust store; ``tls_client_cert``/``tls_client_key`` (PEM)
    present a client certificate."""
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
    return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, clientCertificate=client_certificate,
                                   extraCertificateOptions=extra or None)


def describe_tls_failure(error: BaseException | None, host: str) -> str | None:
    """A readable cause for a TLS failure (None for other errors)."""
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
