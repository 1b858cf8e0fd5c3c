"""The client's address behind proxies, and the endpoint strings for scale-out:
``reuseport:`` (SO_REUSEPORT) and ``haproxy:`` (PROXY protocol) wrapping ours."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

from mcp_twisted import endpoints
from mcp_twisted.metrics import Metrics
from mcp_twisted.proxy import MAX_FORWARDED_HOPS, TrustedProxies
from mcp_twisted.websocket import MCPServerFactory
from tests.support import connect, find, listen, make_app, stop, until
from tests.test_tap import needs_reuse_port

# -- X-Forwarded-For -------------------------------------------------------------


PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "::1"])


@pytest.mark.parametrize(("peer", "header", "client"), [
    ("10.1.1.1", "203.0.113.7", "203.0.113.7"),
    # Read from the right: the client wrote the left part itself.
    ("10.1.1.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),
    # Trusted hops are skipped; the first untrusted one is the client.
    ("10.1.1.1", "198.51.100.1, 203.0.113.7, 10.2.2.2", "203.0.113.7"),
    # Only trusted hops: the farthest one.
    ("10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),
    # Garbage ends the walk at the last address that can be believed.
    ("10.1.1.1", "evil, 10.2.2.2", "10.2.2.2"),
    ("10.1.1.1", "not-an-address", None),
    ("::1", "2001:db8::5", "2001:db8::5"),
    # An untrusted peer's header is ignored, and so is a missing one.
    ("192.0.2.9", "203.0.113.7", None),
    ("10.1.1.1", None, None),
])
def test_forwarded_for_is_believed_only_from_trusted_proxies(peer: str, header: str | None,
                                                               client: str | None):
    assert PROXIES.client_address(peer, header) == client


def test_a_long_header_is_read_only_that_far_from_the_right():
    hops = ["10.9.9.9"] * (MAX_FORWARDED_HOPS + 5)
    header = ", ".join(["203.0.113.7", *hops])
    assert PROXIES.client_address("10.1.1.1", header) == "10.9.9.9"


def test_a_web_request_from_a_trusted_proxy_names_its_client():
    from twisted.internet.address import IPv4Address
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"mcp"])
    request.client = IPv4Address("TCP", "10.1.1.1", 40000)
    request.requestHeaders.addRawHeader(b"x-forwarded-for", b"203.0.113.7")
    assert PROXIES.request_client(request) == "203.0.113.7"
    assert TrustedProxies().request_client(request) is None


def test_no_trusted_proxies_believe_nothing_and_bad_networks_are_named():
    assert not TrustedProxies()
    assert TrustedProxies().client_address("127.0.0.1", "203.0.113.7") is None
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or network"):
        TrustedProxies(["10.0.0.0/33"])


@pytest.mark.parametrize(("trusted", "logged"), [
    (["127.0.0.1"], r"203\.0\.113\.7"),  # the header of a trusted proxy names the client
    (["10.0.0.0/8"], r"tcp4:127\.0\.0\.1:\d+"),  # anyone else's is ignored
])
@pytest_twisted.ensureDeferred
async def test_websocket_logs_the_forwarded_client_only_from_a_trusted_proxy(
        events: list[dict[str, Any]], trusted: list[str], logged: str):
    app, _ = make_app()
    metrics = Metrics()
    factory = MCPServerFactory(app, trusted_proxies=TrustedProxies(trusted), metrics=metrics)
    port = await listen(factory)
    try:
        client = await connect(port.getHost().port, headers={"X-Forwarded-For": "203.0.113.7"})
        (opened,) = find(events, "Opened")
        assert re.fullmatch(logged, opened["peer"]), opened["peer"]
        # Logs only: no metric label takes an address (labels stay a small fixed set).
        assert b"203.0.113.7" not in generate_latest(metrics.registry)
        client.sendClose(1000)
        await client.closed
    finally:
        await stop(port, factory)


# -- endpoint strings --------------------------------------------------------------


async def _listening_socket_option(description: str, option: int) -> int:
    endpoint = endpoints.server_from_string(reactor, description)
    port = await endpoint.listen(Factory.forProtocol(Protocol))
    try:
        return port.socket.getsockopt(socket.SOL_SOCKET, option)  # type: ignore[no-any-return]
    finally:
        await port.stopListening()


@needs_reuse_port
@pytest_twisted.ensureDeferred
async def test_reuseport_sets_so_reuseport_on_the_wrapped_listener():
    assert await _listening_socket_option("reuseport:tcp:0:interface=127.0.0.1", socket.SO_REUSEPORT)
    assert not await _listening_socket_option("tcp:0:interface=127.0.0.1", socket.SO_REUSEPORT)


@needs_reuse_port
@pytest_twisted.ensureDeferred
async def test_two_reuseport_listeners_share_a_port_and_a_plain_one_cannot():
    factory = Factory.forProtocol(Protocol)
    first = await endpoints.server_from_string(reactor, "reuseport:tcp:0:interface=127.0.0.1").listen(factory)
    number = first.getHost().port
    second = await endpoints.server_from_string(
        reactor, f"reuseport:tcp:{number}:interface=127.0.0.1").listen(factory)
    try:
        with pytest.raises(Exception, match="Address already in use"):
            await endpoints.server_from_string(reactor, f"tcp:{number}:interface=127.0.0.1").listen(factory)
    finally:
        await first.stopListening()
        await second.stopListening()


@needs_reuse_port
@pytest_twisted.ensureDeferred
async def test_haproxy_wraps_our_endpoints_and_keeps_reuseport():
    endpoint = endpoints.server_from_string(reactor, "haproxy:reuseport:tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(Factory.forProtocol(Protocol))
    try:
        assert isinstance(port.factory, HAProxyWrappingFactory)
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        await port.stopListening()


def test_reuseport_without_twisted_bindings_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    import twisted.internet.tcp

    monkeypatch.delattr(twisted.internet.tcp, "makeBinding")
    with pytest.raises(ValueError, match=r"SO_REUSEPORT needs Twisted 26\.10 or later"):
        endpoints.reuse_port_reactor(reactor)


@pytest_twisted.ensureDeferred
async def test_websocket_behind_proxy_protocol_logs_the_client(events: list[dict[str, Any]]):
    """PROXY v2 from HAProxy: Twisted's wrapper makes the peer the client, once
    the header has arrived (after Autobahn took the peer at connectionMade)."""
    app, _ = make_app()
    factory = MCPServerFactory(app)
    endpoint = endpoints.server_from_string(reactor, "haproxy:tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(factory)
    number = port.getHost().port
    try:
        with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
            s.sendall(_proxy_v2_header("203.0.113.7", 40000, "127.0.0.1", number) + (
                b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Protocol: mcp\r\n\r\n"))
            await until(lambda: find(events, "Opened"))
        assert find(events, "Opened", peer="tcp4:203.0.113.7:40000")
    finally:
        await stop(port, factory)


def _proxy_v2_header(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    """A PROXY protocol v2 header for TCP over IPv4, as HAProxy's send-proxy-v2 writes it."""
    addresses = (socket.inet_aton(source) + socket.inet_aton(destination)
                 + source_port.to_bytes(2, "big") + destination_port.to_bytes(2, "big"))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + len(addresses).to_bytes(2, "big") + addresses)
