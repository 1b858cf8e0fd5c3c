"""What keeps an idle WebSocket session small and a call cheap, checked
without sockets: the upgrade and the MCP handshake are fed to the protocol
over a ``StringTransport``."""

from __future__ import annotations

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mcp_twisted import MCPServer
from mcp_twisted.protocol import LATEST_PROTOCOL_VERSION
from mcp_twisted.websocket import MCPServerFactory, MCPServerProtocol

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)
UPGRADE = (b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: mcp\r\n\r\n")


class Transport(StringTransport):
    def unregisterProducer(self) -> None:  # Autobahn unregisters one it never registered
        self.producer = None


def frame(message: dict[str, object]) -> bytes:
    """A masked client text frame (mask zero: the payload as it is)."""
    payload = orjson.dumps(message)
    assert len(payload) < 1 << 16
    size = bytes((0x80 | len(payload),)) if len(payload) < 126 else b"\xfe" + len(payload).to_bytes(2, "big")
    return b"\x81" + size + b"\0\0\0\0" + payload


def factory() -> MCPServerFactory:
    app = MCPServer("perf")

    @app.tool()
    def echo(text: str) -> str:
        return text

    return MCPServerFactory(app)


def connect(factory: MCPServerFactory) -> tuple[MCPServerProtocol, Transport]:
    """An initialised session."""
    protocol = factory.buildProtocol(PEER)
    transport = Transport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    params = {"protocolVersion": LATEST_PROTOCOL_VERSION, "capabilities": {},
              "clientInfo": {"name": "t", "version": "1"}}
    protocol.dataReceived(frame({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
                          + frame({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    transport.clear()
    return protocol, transport


def test_autobahn_options_live_on_the_class_not_on_each_connection():
    served = factory()
    protocol, _ = connect(served)
    assert isinstance(protocol, MCPServerProtocol)
    assert type(protocol).__name__ == MCPServerProtocol.__name__
    assert not set(MCPServerProtocol.CONFIG_ATTRS) & set(vars(protocol))
    assert protocol.autoPingInterval == served.autoPingInterval == 20
    assert protocol.maxMessagePayloadSize == served.host.limits.max_message_size


def test_later_options_apply_to_new_connections_only():
    served = factory()
    before, _ = connect(served)
    served.setProtocolOptions(autoPingInterval=30)
    after, _ = connect(served)
    assert (before.autoPingInterval, after.autoPingInterval) == (20, 30)
    served.resetProtocolOptions()
    assert connect(served)[0].autoPingInterval == 0


def test_a_protocol_class_set_on_the_factory_is_used():
    class Custom(MCPServerProtocol):
        pass

    served = factory()
    served.protocol = Custom
    protocol, _ = connect(served)
    assert isinstance(protocol, Custom) and type(protocol).__name__ == "Custom"


def test_an_idle_session_holds_no_backlog_waiters_or_report_logs():
    protocol, transport = connect(factory())
    assert protocol._backlog is None
    assert len(protocol._writable_waiters) == 0 and protocol._writable_waiters._waiters is None
    assert protocol.session is not None and protocol.session._reports is None
    assert protocol.http_request_data == b"" and protocol.http_response_data == ""
    protocol.dataReceived(frame({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": {"name": "echo", "arguments": {"text": "hi"}}}))
    assert b'"text":"hi"' in transport.value()


def test_a_paused_connection_keeps_what_it_read_and_answers_it_on_resume():
    protocol, transport = connect(factory())
    protocol.pauseProducing()
    protocol.dataReceived(frame({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    assert transport.value() == b"" and protocol._backlog is not None and len(protocol._backlog) == 1
    protocol.resumeProducing()
    assert b'"id":1' in transport.value() and not protocol._backlog
