"""Twisted services that run an ``MCPServerFactory`` on endpoints."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from mcp_twisted.websocket import MCPServerFactory

CLOSE_GOING_AWAY = 1001

log = Logger()


class MCPWebSocketService(MultiService):
    """Listens on every endpoint given; on stop, says goodbye to each client.

    Stopping (twistd's SIGTERM path) first stops accepting connections, then
    closes the open ones with 1001 (going away) so clients reconnect at once
    instead of waiting for a timeout, and waits up to ``close_timeout``
    seconds for their close handshakes.
    """

    def __init__(
        self,
        factory: MCPServerFactory,
        endpoints: Iterable[IStreamServerEndpoint],
        *,
        close_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.close_timeout = close_timeout
        for endpoint in endpoints:
            listener = StreamServerEndpointService(endpoint, factory)
            # Fail the start (and twistd) on a bind error instead of logging
            # it and running without a listener.
            listener._raiseSynchronously = True
            listener.setServiceParent(self)

    @inlineCallbacks
    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        yield super().stopService()
        connections = list(self.factory.connections)
        if not connections:
            return
        log.info("Closing {count} connections (server shutting down)", count=len(connections))
        for connection in connections:
            connection.sendCloseFrame(CLOSE_GOING_AWAY, b"server shutting down")
        closed = DeferredList([c.is_closed for c in connections], consumeErrors=True)
        closed.addTimeout(self.close_timeout, self.factory.clock)
        try:
            yield closed
        except Exception:
            for connection in list(self.factory.connections):
                connection.dropConnection(abort=True)
