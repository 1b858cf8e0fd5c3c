"""What keeps an idle WebSocket session small and a call cheap, checked
without sockets: the upgrade and the MCP handshake are fed to the protocol
over a ``StringTransport``."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
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


def factory(**options: Any) -> MCPServerFactory:
    app = MCPServer("perf")

    @app.tool()
    def echo(text: str) -> str:
        return text

    return MCPServerFactory(app, **options)


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
    assert protocol.openHandshakeTimeout == served.openHandshakeTimeout == 5
    assert protocol.maxMessagePayloadSize == served.host.limits.max_message_size


def test_later_options_apply_to_new_connections_only():
    served = factory()
    before, _ = connect(served)
    served.setProtocolOptions(openHandshakeTimeout=30)
    after, _ = connect(served)
    assert (before.openHandshakeTimeout, after.openHandshakeTimeout) == (5, 30)
    served.resetProtocolOptions()
    assert connect(served)[0].openHandshakeTimeout == 5


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


def pong(ping: bytes) -> bytes:
    """The client's answer to a ping frame the server wrote."""
    assert ping[0] == 0x89 and ping[1] == len(ping) - 2 < 126
    return bytes((0x8A, 0x80 | ping[1])) + b"\0\0\0\0" + ping[2:]


def test_one_timer_pings_idle_connections_and_keeps_those_that_answer():
    clock = Clock()
    served = factory(clock=clock, ping_interval=3, ping_timeout=2)
    (live, live_out), (dead, dead_out) = connect(served), connect(served)
    clock.advance(2)
    assert live_out.value() == dead_out.value() == b""
    clock.advance(1)  # 3 s idle: both are pinged
    ping = live_out.value()
    assert ping.startswith(b"\x89\x0c") and dead_out.value().startswith(b"\x89\x0c")
    live_out.clear()
    live.dataReceived(pong(ping))
    assert live.autoPingPending is None and dead.autoPingPending
    clock.advance(1)
    assert not dead_out.disconnecting
    clock.advance(1)  # 2 s without an answer: dropped, as Autobahn's auto-ping does
    assert dead.state == dead.STATE_CLOSED or dead_out.disconnecting
    assert live.state == live.STATE_OPEN and live_out.value() == b""
    clock.advance(1)  # 3 s after its pong: pinged again
    assert live_out.value().startswith(b"\x89\x0c")
    assert len(served.keepalive._due) == 1  # one tick holds the live connection; the dead one is gone


def test_traffic_puts_the_ping_off():
    clock = Clock()
    served = factory(clock=clock, ping_interval=3, ping_timeout=2)
    protocol, transport = connect(served)
    for _ in range(4):
        clock.advance(2)
        protocol.dataReceived(frame({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        assert transport.value() == b'\x81${"jsonrpc":"2.0","id":1,"result":{}}'  # no ping among it
        transport.clear()
    clock.advance(3)
    assert transport.value().startswith(b"\x89\x0c")


def test_no_timer_without_ping():
    served = factory(clock=Clock(), ping_interval=0)
    connect(served)
    assert served.keepalive is None


def test_a_pong_that_comes_with_other_frames_is_read_by_autobahn():
    clock = Clock()
    served = factory(clock=clock, ping_interval=3, ping_timeout=2)
    protocol, transport = connect(served)
    clock.advance(3)
    ping = transport.value()
    transport.clear()
    protocol.dataReceived(pong(ping) + frame({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
    assert protocol.autoPingPending is None and b'"id":7' in transport.value()
    clock.advance(2)
    assert protocol.state == protocol.STATE_OPEN


def test_a_function_option_is_called_as_given():
    offers: list[object] = []
    served = factory()
    served.setProtocolOptions(perMessageCompressionAccept=lambda offered: offers.append(offered))
    protocol, _ = connect(served)
    assert protocol.perMessageCompressionAccept([1]) is None and offers == [[1]]


def fragments(payload: bytes, sizes: list[int]) -> list[bytes]:
    """A text message cut into masked frames (mask zero) of these sizes."""
    assert sum(sizes) == len(payload) and max(sizes) < 126
    out, start = [], 0
    for n, size in enumerate(sizes):
        head = (0x80 if n == len(sizes) - 1 else 0) | (0x1 if n == 0 else 0x0)
        out.append(bytes((head, 0x80 | size)) + b"\0\0\0\0" + payload[start:start + size])
        start += size
    return out


def close_code(written: bytes) -> int | None:
    """The code of the close frame the server wrote, if any."""
    at = written.find(b"\x88")
    return int.from_bytes(written[at + 2:at + 4], "big") if at >= 0 else None


PING = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
PONG = b'\x81${"jsonrpc":"2.0","id":1,"result":{}}'


def test_fragments_are_counted_per_message_up_to_the_limit():
    protocol, transport = connect(factory(max_fragments=4))
    # Four fragments (one empty): fine, and the count starts again with each message.
    for _ in range(3):
        protocol.dataReceived(b"".join(fragments(PING, [5, 0, 10, len(PING) - 15])))
        assert transport.value() == PONG
        transport.clear()
    # Nor is a WebSocket ping between them a fragment.
    first, *rest = fragments(PING, [5, 0, 10, len(PING) - 15])
    protocol.dataReceived(first + b"\x89\x80\0\0\0\0" + b"".join(rest))
    assert transport.value() == b"\x8a\x00" + PONG
    transport.clear()
    # A fifth one, even empty, closes with 1009 and the message is dropped.
    protocol.dataReceived(b"".join(fragments(PING, [5, 0, 10, 0, len(PING) - 15])))
    assert close_code(transport.value()) == 1009 and b'"result"' not in transport.value()


def test_a_fragment_limit_of_zero_refuses_every_message():
    protocol = factory(max_fragments=0).buildProtocol(PEER)
    transport = Transport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE)
    transport.clear()
    protocol.dataReceived(frame({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    assert close_code(transport.value()) == 1009 and b'"result"' not in transport.value()


def test_subclass_hooks_for_messages_fragments_and_readiness_are_called():
    seen: list[object] = []

    class Custom(MCPServerProtocol):
        def onMessageBegin(self, isBinary: bool) -> None:
            seen.append(("begin", isBinary))
            super().onMessageBegin(isBinary)

        def onMessageFrameBegin(self, length: int) -> None:
            seen.append(length)
            super().onMessageFrameBegin(length)

        def onSessionReady(self) -> None:
            seen.append("ready")
            super().onSessionReady()

    served = factory(max_fragments=2)
    served.protocol = Custom
    protocol, transport = connect(served)
    assert seen.count("ready") == 1 and seen[-1] == "ready"
    seen.clear()
    protocol.dataReceived(b"".join(fragments(PING, [5, len(PING) - 5])))
    assert seen == [("begin", False), 5, len(PING) - 5] and transport.value() == PONG
    protocol.dataReceived(frame({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
    assert "ready" not in seen  # announced once


def _call(request_id: int) -> bytes:
    return frame({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                  "params": {"name": "echo", "arguments": {"text": f"call {request_id}"}}})


def test_a_message_is_delivered_without_autobahn_event_machinery():
    """No listener for Autobahn's "message" event: the message reaches the
    session once, and no event is fired (no Deferred per message)."""
    protocol, transport = connect(factory())
    fired: list[str] = []
    protocol.fire = lambda event, *args, **kwargs: fired.append(event)  # type: ignore[method-assign]
    protocol.dataReceived(_call(1) + _call(2))
    assert fired == []
    assert transport.value().count(b'"text":"call 1"') == transport.value().count(b'"text":"call 2"') == 1
    assert protocol.message_data is None  # the message's frames are let go


def test_listeners_of_the_message_event_still_hear_every_message():
    """``protocol.on("message", ...)`` takes Autobahn's own way: the session
    answers and the listener is told, as Autobahn does it."""
    protocol, transport = connect(factory())
    heard: list[tuple[bytes, bool]] = []
    protocol.on("message", lambda payload, is_binary: heard.append((payload, is_binary)))
    protocol.dataReceived(_call(3))
    assert heard == [(orjson.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                    "params": {"name": "echo", "arguments": {"text": "call 3"}}}), False)]
    assert b'"text":"call 3"' in transport.value()
