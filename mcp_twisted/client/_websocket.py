"""The client's WebSocket transport: an Autobahn protocol carrying one session.

``MCPClientProtocol`` is a ``SessionConnection`` over a WebSocket;
``WebSocketConnector`` makes them for ``MCPClientService``.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from mcp_twisted._autobahn import CLOSE_NORMAL, SUBPROTOCOL, FastPathMixin, check_timer_settings
from mcp_twisted.client._api import MCPClient
from mcp_twisted.client._connection import (
    Connector,
    SessionConnection,
    describe_tls_failure,
    origin_of,
    tls_options,
)
from mcp_twisted.client._lifecycle import ConnectionState
from mcp_twisted.client._oauth import OAuthClient, Refused, bearer

__all__ = ["MCPClientFactory", "MCPClientProtocol", "WebSocketConnector", "endpoint_for_url"]

class MCPClientProtocol(SessionConnection, FastPathMixin, WebSocketClientProtocol):  # type: ignore[misc]  # Autobahn's two bases define peer and _transport_details differently
    """One WebSocket connection carrying one client session.

    ``connection_state`` follows ``_lifecycle.TRANSITIONS``. ``initialized``
    fires with this protocol once the session is initialized (READY), and
    fails with ``ConnectionFailed`` (saying why) if the connection ends
    before; cancelling it gives the connection up.
    """

    factory: MCPClientFactory

    def __init__(self) -> None:
        super().__init__()
        self._init_connection()

    def connectionMade(self) -> None:
        self.factory.current = self
        self.client = self.factory.client
        self.target = self.factory.url
        self.era_key = origin_of(self.factory.url)
        super().connectionMade()

    def onOpen(self) -> None:
        self._open_session(self._send_message)

    @property
    def upgrade_refusal(self) -> Refused | None:
        """The status and challenges of an upgrade refused with 401 or 403
        (for the OAuth client to answer); None for any other outcome."""
        status_line = getattr(self, "http_status_line", None)  # set by Autobahn once the answer is read
        if self.session is not None or not isinstance(status_line, str):
            return None
        parts = status_line.split()
        if len(parts) < 2 or parts[1] not in ("401", "403"):
            return None
        challenge = (getattr(self, "http_headers", None) or {}).get("www-authenticate")
        return int(parts[1]), [challenge] if challenge else []

    def _end_transport(self) -> None:
        self.sendClose(CLOSE_NORMAL)

    def _drop(self) -> None:
        self.dropConnection(abort=True)

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
            self.failure_reason = describe_tls_failure(reason.value, self.factory.host)
        super().connectionLost(reason)  # Autobahn calls onClose
        if self.factory.current is self:
            self.factory.current = None
        self._connection_gone(reason)


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
    options = tls_options(parts.hostname, tls_ca, tls_client_cert, tls_client_key)
    return endpoints.wrapClientTLS(options, endpoint)


class WebSocketConnector(Connector):
    """Makes WebSocket connections for ``MCPClientService``: ``endpoint``
    connected with ``factory``. With ``auth``, each upgrade carries the
    access token, and one refused for it is tried again with a new token."""

    def __init__(self, endpoint: IStreamClientEndpoint, factory: MCPClientFactory,
                 auth: OAuthClient | None = None) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.target = factory.url
        self.auth = auth
        self.headers: dict[str, str] = dict(factory.headers)  # the application's own

    @property
    def current(self) -> MCPClientProtocol | None:
        return self.factory.current

    def connect(self) -> Deferred[Any]:
        if self.auth is not None:
            return Deferred.fromCoroutine(self._authorized(self.auth))
        attempt = self.endpoint.connect(self.factory)
        # The endpoint says IProtocol; the factory builds MCPClientProtocols.
        return attempt.addCallback(lambda protocol: cast(MCPClientProtocol, protocol).initialized)

    async def _authorized(self, auth: OAuthClient) -> MCPClientProtocol:
        protocol, failure = await auth.authorized(
            self.target, self._attempt, lambda outcome: outcome[0].upgrade_refusal if outcome[1] else None,
            lambda _: None)
        if failure is not None:
            failure.raiseException()
        return protocol

    def _attempt(self, token: str | None) -> Deferred[tuple[MCPClientProtocol, Failure | None]]:
        """One connection with ``token``: the protocol, and why it failed if it did."""
        self.factory.headers = bearer(self.headers, token)

        def opened(protocol: Any) -> Deferred[tuple[MCPClientProtocol, Failure | None]]:
            return protocol.initialized.addCallbacks(  # type: ignore[no-any-return]
                lambda _: (protocol, None), lambda failure: (protocol, failure))

        return self.endpoint.connect(self.factory).addCallback(opened)

    def handle(self, connection: Any) -> Any:
        return connection.transport
