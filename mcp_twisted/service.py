"""Twisted services that run an ``MCPServerFactory`` on endpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.protocol import SERVER_SHUTTING_DOWN
from mcp_twisted.websocket import MCPServerFactory

if TYPE_CHECKING:
    from mcp_twisted.http import MCPHTTPResource

__all__ = [
    "CLOSE_GOING_AWAY",
    "ListenError",
    "MCPService",
    "MCPWebSocketService",
]

CLOSE_GOING_AWAY = 1001

log = Logger()


class ListenError(Exception):
    """A listener could not start (port in use, missing directory, ...)."""


class _Listener(StreamServerEndpointService):
    """Listens on one endpoint; a failure to bind names the endpoint."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]  # Twisted's service, unannotated
        self.description = description
        # Fail the start (and twistd) on a bind error instead of logging it
        # and running without a listener.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted's service, unannotated
        except Exception as e:
            raise ListenError(f"cannot listen on {self.description!r}: {e}") from e


class MCPService(MultiService):
    """Listens on every endpoint given; on stop, drains and says goodbye.

    Each listener serves WebSocket (``factory``) and, when ``http`` is given,
    Streamable HTTP on the same path: an upgrade request goes to Autobahn,
    everything else to twisted.web.

    Stopping (twistd's SIGTERM path) goes in these steps:

    0. at once ``/healthz`` and new sessions (WebSocket upgrades, HTTP
       ``initialize``) get 503, while live sessions are served as before for
       ``drain_delay`` seconds, so a load balancer marks this server down and
       sends new clients elsewhere before anyone is disconnected.
       ``SO_REUSEPORT`` listeners (``reuse_port``) close at once instead: the
       kernel then gives new connections to the other processes on the port;
    1. stop accepting connections;
    2. drain: new requests are refused (``-32003``) while requests already
       running may finish, for up to ``drain_timeout`` seconds; those still
       running then are cancelled and answered with ``-32003`` too. HTTP
       requests whose token is still being checked are waited for likewise,
       then answered 503;
    3. close every WebSocket connection with 1001 (going away), so clients
       reconnect at once instead of waiting for a timeout, and end every HTTP
       session (its streams end after their answers); wait up to
       ``close_timeout`` seconds for the close handshakes; drop the rest.
    """

    def __init__(
        self,
        factory: MCPServerFactory,
        endpoints: Mapping[str, IStreamServerEndpoint] | Iterable[IStreamServerEndpoint],
        *,
        http: MCPHTTPResource | None = None,
        websocket: bool = True,
        drain_delay: float = 0.0,
        drain_timeout: float = 10.0,
        close_timeout: float = 5.0,
        metrics_endpoint: IStreamServerEndpoint | None = None,
        health_endpoint: IStreamServerEndpoint | None = None,
        reuse_port: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """
        :param endpoints: where to listen; a mapping from endpoint strings to
            endpoints names each in errors.
        :param http: also serve Streamable HTTP (the resource must use the
            factory's ``host``); ``websocket=False`` then serves HTTP only.
        :param metrics_endpoint: where to serve ``/metrics`` and ``/healthz``
            (the factory must have been given ``metrics``). It keeps serving
            while connections drain, so health checks see the 503.
        :param health_endpoint: where to serve only ``/healthz`` (it is also
            on every main listener that serves HTTP), kept serving likewise.
        :param reuse_port: the listeners share their port with other
            processes: close them as soon as the drain starts.
        :param extra: more twisted.web resources on the main listeners, by
            exact path (the OAuth protected-resource metadata); served
            without ``http`` too, beside WebSocket.
        """
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's MultiService, unannotated
        self.factory = factory
        self.drain_delay = drain_delay
        self.reuse_port = reuse_port
        self.drain_timeout = drain_timeout
        self.close_timeout = close_timeout
        self.listeners = MultiService()
        self.listeners.setServiceParent(self)
        self.http = http
        listening: Any = factory
        # WebSocket alone needs no HTTP server, unless there are pages beside
        # it: the OAuth metadata that a 401's challenge names must be served.
        if http is not None or extra:
            from autobahn.twisted.resource import WebSocketResource

            from mcp_twisted.http import MCPSite
            from mcp_twisted.metrics import Health

            pages = dict(extra or {})
            if http is not None:
                # /healthz on the port the balancer sends clients to: it sees the drain there.
                pages["/healthz"] = Health(factory)
            listening = MCPSite(http, WebSocketResource(factory) if websocket else None,
                                max_body_size=factory.host.limits.max_message_size,
                                reactor=factory.host.clock, extra=pages)
        named = endpoints.items() if isinstance(endpoints, Mapping) else ((repr(e), e) for e in endpoints)
        for description, endpoint in named:
            _Listener(endpoint, listening, description).setServiceParent(self.listeners)
        if metrics_endpoint is not None:
            from mcp_twisted.metrics import metrics_site

            _Listener(metrics_endpoint, metrics_site(factory), "metrics endpoint").setServiceParent(self)
        if health_endpoint is not None:
            from mcp_twisted.metrics import health_site

            _Listener(health_endpoint, health_site(factory), "health endpoint").setServiceParent(self)

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        host = self.factory.host
        host.draining = True
        # Upgrades still waiting for their token check could only end in 503 now: answer them at once.
        self.factory.refuse_pending_upgrades()
        if self.reuse_port:
            yield self.listeners.stopService()
        if self.drain_delay:
            log.info("Draining: /healthz and new sessions get 503; {count} sessions served {delay:g} s more",
                     count=len(host.sessions), delay=self.drain_delay)
            yield deferLater(self.factory.clock, self.drain_delay)
        if self.listeners.running:
            yield self.listeners.stopService()
        sessions = list(host.sessions)
        if host.in_flight:
            log.info("Draining: waiting up to {timeout}s for {count} running requests",
                     timeout=self.drain_timeout, count=host.in_flight)
        drained = host.drain()
        if self.http is not None:
            # HTTP requests whose token is still being checked are waited
            # for too (a session's would be refused -32003, a new one 503);
            # close_all answers 503 to those the timeout leaves.
            drained = DeferredList([drained, self.http.admissions_settled()], consumeErrors=True)
        drained.addTimeout(self.drain_timeout, self.factory.clock)
        with contextlib.suppress(TimeoutError):
            yield drained
        # Every request gets an answer: what a paused connection read but did
        # not handle yet is refused now, what still runs is cancelled and told so.
        for connection in list(self.factory.connections):
            connection.flush_backlog()
        shutting_down = RPCError(SERVER_SHUTTING_DOWN, "Server shut down before the request finished")
        aborted = sum(session.abort_running(shutting_down) for session in sessions)
        if aborted:
            log.info("Drain timeout: answered {count} running requests with an error", count=aborted)
        if self.http is not None:
            self.http.close_all()
        connections = list(self.factory.connections)
        if connections:
            log.info("Closing {count} connections (server shutting down)", count=len(connections))
            for connection in connections:
                connection.sendCloseFrame(CLOSE_GOING_AWAY, b"server shutting down")
            closed = DeferredList([c.is_closed for c in connections], consumeErrors=True)
            closed.addTimeout(self.close_timeout, self.factory.clock)
            try:
                yield closed
            except TimeoutError:
                for connection in list(self.factory.connections):
                    connection.dropConnection(abort=True)
        # Last, what still runs (the metrics listener): health checks saw the drain.
        Service.stopService(self)
        yield DeferredList([maybeDeferred(child.stopService) for child in self if child.running])


# The name from before Streamable HTTP.
MCPWebSocketService = MCPService
