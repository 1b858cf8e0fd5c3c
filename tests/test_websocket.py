"""The WebSocket transport over real sockets on 127.0.0.1; the auto-ping timers
run on a ``task.Clock``."""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import task

from mcp_twisted.session import State
from mcp_twisted.websocket import (
    MCPServerFactory,
    MCPServerProtocol,
    OriginPolicy,
    is_ip_literal,
    is_loopback_host,
)
from tests.support import SilentClient, connect, find, handshake, make_app, raw_response, until


@pytest_twisted.async_fixture
async def server(served):
    return await served(max_message_size=1000, allowed_origins=["https://app.example.com"])


@pytest_twisted.ensureDeferred
async def test_echo_roundtrip_and_subprotocol(server):
    factory, port, _ = server
    client = await connect(port)
    assert client.websocket_protocol_in_use == "mcp"
    reply = await client.initialize()
    assert reply["result"]["serverInfo"]["name"] == "test-app"
    reply = await client.request(1, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    assert reply == {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}]}}
    assert len(factory.connections) == 1
    client.sendClose(1000)
    assert (await client.closed)[:2] == (True, 1000)


@pytest.mark.parametrize(
    ("offered", "expected"),
    [("mcp", "mcp"), ("foo, mcp", "mcp"), ("foo", None), (None, None)],
)
@pytest_twisted.ensureDeferred
async def test_subprotocol_selected_only_when_offered(server, offered, expected):
    _, port, _ = server
    headers = {"Sec-WebSocket-Protocol": offered} if offered else {}
    status, response = await handshake(port, headers=headers)
    assert status == 101
    assert response.get("sec-websocket-protocol") == expected


@pytest_twisted.ensureDeferred
async def test_binary_frame_closes_1003_and_spares_other_connections(server):
    _, port, _ = server
    bystander = await connect(port)
    await bystander.initialize()
    client = await connect(port)
    client.sendMessage(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}', isBinary=True)
    assert (await client.closed)[1] == 1003
    reply = await bystander.request(2, "ping")
    assert reply["result"] == {}


@pytest_twisted.ensureDeferred
async def test_messages_behind_a_close_run_nothing_and_are_logged_once(server, events):
    # Once the server has sent its close frame, requests still arriving must
    # not run their handlers (their answers could not be sent), and a flood
    # of binary frames is one log line, not one each.
    _, port, state = server
    client = await connect(port)
    await client.initialize()
    client.sendMessage(b"\x00", isBinary=True)
    for i in range(3):
        client.send_json({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "hang"}})
    for _ in range(50):
        client.sendMessage(b"\x01", isBinary=True)
    assert (await client.closed)[1] == 1003
    assert state["gates"] == []
    assert len(find(events, "Closing {peer}: binary frame")) == 1


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_closes_1007(server):
    _, port, _ = server
    client = await connect(port)
    client.sendMessage(b'{"x": "\xff\xfe"}')
    assert (await client.closed)[1] == 1007


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_1009(server):
    _, port, _ = server
    client = await connect(port)
    client.send_json({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 2000}})
    assert (await client.closed)[1] == 1009


@pytest_twisted.ensureDeferred
async def test_bad_json_gets_jsonrpc_errors_and_connection_survives(server):
    _, port, _ = server
    client = await connect(port)
    client.sendMessage(b"{not json")
    assert (await client.next_message())["error"]["code"] == -32700
    client.send_json({"jsonrpc": "2.0", "id": 5})
    reply = await client.next_message()
    assert reply["error"]["code"] == -32600
    await client.initialize()
    reply = await client.request(7, "no/such/method")
    assert reply["error"]["code"] == -32601


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),
        ("https://evil.example", 403),
        ("null", 403),
        ("https://app.example.com", 101),
        ("SAME", 101),
    ],
)
@pytest_twisted.ensureDeferred
async def test_origin_allow_list(server, origin, status):
    _, port, _ = server
    headers = {}
    if origin == "SAME":
        headers["Origin"] = f"http://127.0.0.1:{port}"
    elif origin is not None:
        headers["Origin"] = origin
    assert (await handshake(port, headers=headers))[0] == status


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 421), ("evil.example:80", 421), ("localhost", 101), ("[::1]:9", 101)],
)
@pytest_twisted.ensureDeferred
async def test_dns_rebinding_host_check_on_loopback(server, host, status):
    _, port, _ = server
    assert (await handshake(port, host=host))[0] == status


@pytest_twisted.ensureDeferred
async def test_wrong_path_is_404(server):
    _, port, _ = server
    assert (await handshake(port, path="/other"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_close_cancels_handlers_and_empties_registry(server):
    factory, port, state = server
    client = await connect(port)
    await client.initialize()
    client.send_json({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "hang", "arguments": {}}})
    await until(lambda: state["gates"])
    (session,) = factory.app.sessions
    assert session.in_flight == 1
    client.transport.abortConnection()
    await client.closed
    await until(lambda: not factory.connections)
    assert state["cancelled"] == 1
    assert session.in_flight == 0 and session.waiting == 0
    assert factory.app.sessions == []


@pytest_twisted.ensureDeferred
async def test_auto_ping_drops_a_silent_peer(served):
    clock = task.Clock()
    factory, port, _ = await served(ping_interval=1, ping_timeout=2, clock=clock)
    client = await connect(port, client=SilentClient)
    await client.initialize()
    await client.request("sync", "ping")  # notifications/initialized has arrived, too
    assert len(factory.connections) == 1 and len(factory.app.sessions) == 1
    (server_side,) = factory.connections
    (session,) = factory.app.sessions
    clock.advance(1)  # a ping goes out, and is never answered
    assert server_side.autoPingPending
    clock.advance(1.9)
    assert server_side.state == WebSocketProtocol.STATE_OPEN
    clock.advance(0.1)
    was_clean, _, _ = await client.closed
    assert not was_clean
    await until(lambda: not factory.connections)
    assert session.state is State.CLOSED
    assert factory.app.sessions == []


@pytest_twisted.ensureDeferred
async def test_auto_ping_keeps_a_live_peer(served):
    clock = task.Clock()
    factory, port, _ = await served(ping_interval=1, ping_timeout=2, clock=clock)
    client = await connect(port)
    (server_side,) = factory.connections
    for _ in range(3):  # three pings, each answered; the third comes after the first's timeout
        clock.advance(1)
        assert server_side.autoPingPending
        await until(lambda: server_side.autoPingPending is None)
    assert server_side.state == WebSocketProtocol.STATE_OPEN
    assert (await client.request(1, "ping"))["result"] == {}


@pytest.mark.parametrize("values", [{"ping_interval": 0.5}, {"ping_timeout": 0.2}])
def test_sub_second_ping_settings_are_refused(values):
    with pytest.raises(ValueError, match="whole seconds"):
        MCPServerFactory(make_app()[0], **values)


def test_origin_policy_rules():
    policy = OriginPolicy(["https://app.example.com", "https://*.corp.example", "null"])
    assert policy.allows(None, "x")
    assert policy.allows("https://APP.example.com:443", "x")
    assert policy.allows("https://a.corp.example", "x")
    assert not policy.allows("https://corp.example.evil", "x")
    assert not policy.allows("http://app.example.com", "x")
    assert policy.allows("null", "x")
    assert policy.allows("http://localhost:8080", "localhost:8080")
    assert not policy.allows("http://localhost:8081", "localhost:8080")
    assert OriginPolicy(["*"]).allows("https://anything.example", "x")


def test_loopback_names():
    assert is_loopback_host("127.0.0.1:8080")
    assert is_loopback_host("[::1]")
    assert is_loopback_host("app.localhost")
    assert not is_loopback_host("example.com")
    assert not is_loopback_host("127.0.0.1.nip.io")


@pytest_twisted.ensureDeferred
async def test_allowed_hosts_extend_the_loopback_names(served):
    _, number, _ = await served(allowed_hosts=["MCP.example.com"])
    assert (await handshake(number, host="mcp.example.com"))[0] == 101
    assert (await handshake(number, host="other.example.com"))[0] == 421


def test_same_origin_needs_a_host_that_cannot_be_rebound():
    policy = OriginPolicy()
    # A page on a rebound name sends its own name as Origin and Host: not trusted.
    assert not policy.allows("http://rebind.example:8080", "rebind.example:8080", host_trusted=False)
    assert policy.allows("http://10.0.0.5:8080", "10.0.0.5:8080", host_trusted=True)
    assert is_ip_literal("10.0.0.5:8080") and is_ip_literal("[::1]:80")
    assert not is_ip_literal("rebind.example:8080")


@pytest_twisted.ensureDeferred
async def test_allowed_hosts_ignore_port_case_and_trailing_dot(served):
    _, number, _ = await served(allowed_hosts=["mcp.example.com"])
    for host in ("mcp.example.com:8443", "MCP.Example.com.", "mcp.example.com"):
        assert (await handshake(number, host=host))[0] == 101, host
    # An allowed name also makes same-origin pages work.
    headers = {"Origin": "https://mcp.example.com"}
    assert (await handshake(number, headers=headers, host="mcp.example.com"))[0] == 101


@pytest_twisted.ensureDeferred
async def test_upgrades_during_drain_are_refused_with_503(served):
    factory, number, _ = await served()
    factory.draining = True
    assert (await handshake(number))[0] == 503


@pytest_twisted.ensureDeferred
async def test_an_exception_in_on_session_ready_is_logged_not_fatal(served, events):
    class Broken(MCPServerProtocol):
        def onSessionReady(self) -> None:
            raise RuntimeError("hook bug")

    factory, number, _ = await served()
    factory.protocol = Broken
    client = await connect(number)
    await client.initialize()
    reply = await client.request(1, "tools/call", {"name": "echo", "arguments": {"text": "still"}})
    assert reply["result"]["content"][0]["text"] == "still"
    (failure,) = find(events, "onSessionReady raised")
    assert "log_failure" in failure


@pytest_twisted.ensureDeferred
async def test_an_exception_in_on_connect_is_a_500_without_details(served):
    class Leaky(MCPServerProtocol):
        def onConnect(self, request):
            raise RuntimeError("password=hunter2")

    factory, number, _ = await served()
    factory.protocol = Leaky
    raw = await raw_response(number, (
        b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
    assert raw.startswith(b"HTTP/1.1 500") and b"hunter2" not in raw
