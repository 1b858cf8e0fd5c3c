"""Prometheus metrics and a health check, served on their own listener.

``Metrics`` holds the counters a factory updates as connections come and go
and requests finish. ``metrics_site(factory)`` is a twisted.web ``Site`` with
``/metrics`` (prometheus-client's exposition) and ``/healthz`` (200 while
serving, 503 from the first moment of a shutdown, so load balancers stop
sending new clients before connections close); ``health_site`` serves only
``/healthz``, and ``Health`` is that page, for other sites. Gauges that describe the present
(open connections, buffered bytes) are read at scrape time, so they cost
nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from mcp_twisted.protocol import KNOWN_METHODS

if TYPE_CHECKING:
    from mcp_twisted.websocket import MCPServerFactory

__all__ = [
    "Health",
    "Metrics",
    "health_site",
    "metrics_site",
]


class Metrics:
    """The counters of one ``MCPServerFactory``, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.factory: MCPServerFactory | None = None
        r = self.registry
        self.connections_accepted = Counter(
            "mcp_connections_accepted", "Sessions opened (WebSocket connections, HTTP sessions, stdio)",
            ["transport"], registry=r)
        self.connections_closed = Counter(
            "mcp_connections_closed", "WebSocket connections closed, by close code", ["code"], registry=r)
        self.handshake_refusals = Counter(
            "mcp_handshake_refusals", "Opening handshakes refused, by reason", ["reason"], registry=r)
        self.messages_received = Counter(
            "mcp_messages_received", "WebSocket messages received", registry=r)
        self.messages_sent = Counter("mcp_messages_sent", "WebSocket messages sent", registry=r)
        self.requests = Counter(
            "mcp_requests", "Requests answered, by method, outcome and transport",
            ["method", "outcome", "transport"], registry=r)
        self.request_duration = Histogram(
            "mcp_request_duration_seconds", "Time from a request's arrival to its answer", ["method"],
            registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60))
        self.ping_timeouts = Counter(
            "mcp_ping_timeouts", "Peers dropped for not answering WebSocket pings", registry=r)
        self.init_timeouts = Counter(
            "mcp_init_timeouts", "Sessions closed for not finishing the MCP handshake in time", registry=r)
        self.output_stalls = Counter(
            "mcp_output_stalls", "Peers closed for leaving too much output unread for too long", registry=r)
        self.registry.register(_LiveGauges(self))

    def observer(self, transport: str) -> Callable[[str, str, float], None]:
        """A session's observer: counts its requests under ``transport``."""

        def request_finished(method: str, outcome: str, seconds: float) -> None:
            # Labels come from what clients send: bound them, or a client
            # inventing method names could grow the registry without end.
            method = method if method in KNOWN_METHODS else "other"
            self.requests.labels(method, outcome, transport).inc()
            self.request_duration.labels(method).observe(seconds)

        return request_finished

    def connection_closed(self, code: int | None) -> None:
        label = str(code) if code is not None and 1000 <= code <= 1015 else "other"
        self.connections_closed.labels(label).inc()


class _LiveGauges:
    """Gauges computed from the factory when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        factory = self.metrics.factory
        connections = list(factory.connections) if factory is not None else []
        yield GaugeMetricFamily("mcp_connections_open", "Open WebSocket connections", len(connections))
        sessions = GaugeMetricFamily("mcp_sessions_open", "Live sessions, by transport", labels=["transport"])
        if factory is not None:
            by_transport: dict[str, int] = {}
            for transport in factory.host.sessions.values():
                by_transport[transport] = by_transport.get(transport, 0) + 1
            for transport, count in sorted(by_transport.items()):
                sessions.add_metric([transport], count)
        yield sessions
        yield GaugeMetricFamily(
            "mcp_buffered_bytes", "Bytes written but not yet taken by peers (slow consumers)",
            sum(c.buffered_bytes() for c in connections))
        yield GaugeMetricFamily(
            "mcp_paused_connections", "Connections not read because their peer is not reading",
            sum(1 for c in connections if c.paused))
        yield GaugeMetricFamily(
            "mcp_requests_in_flight", "Requests running",
            factory.host.in_flight if factory is not None else 0)
        yield GaugeMetricFamily(
            "mcp_draining", "1 while the server is shutting down (/healthz says 503)",
            int(factory is not None and factory.draining))


class _Exposition(Resource):
    """``/metrics``, rendered in the reactor thread.

    Not prometheus-client's ``MetricsResource``: that runs the registry in the
    reactor's thread pool, where the live gauges would read connections,
    transports and sessions while the reactor thread changes them.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's Resource, unannotated
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode())
        return encoder(self.registry)


class Health(Resource):
    """``/healthz``: 200 while serving, 503 while draining."""

    isLeaf = True

    def __init__(self, factory: MCPServerFactory) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's Resource, unannotated
        self.factory = factory

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.factory.draining:
            request.setResponseCode(503)
            return b"draining\n"
        return b"ok\n"


def metrics_site(factory: MCPServerFactory) -> Site:
    """``/metrics`` and ``/healthz`` for ``factory`` (which must have ``metrics``)."""
    if factory.metrics is None:
        raise ValueError("the factory was made without metrics")
    root = Resource()
    root.putChild(b"metrics", _Exposition(factory.metrics.registry))
    root.putChild(b"healthz", Health(factory))
    return _quiet_site(root)


def health_site(factory: MCPServerFactory) -> Site:
    """Only ``/healthz``: a listener for probes, e.g. when the main one
    expects the PROXY protocol header first."""
    root = Resource()
    root.putChild(b"healthz", Health(factory))
    return _quiet_site(root)


def _quiet_site(root: Resource) -> Site:
    site = Site(root)
    site.noisy = False
    return site
