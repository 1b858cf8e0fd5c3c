"""Attacks that one client can make on the WebSocket server, over real sockets
on 127.0.0.1, each with the bound it must hit and a well-behaved client that
keeps being served meanwhile.

Each attack is the one measured against an earlier release (see the names),
made smaller so that it runs in a second or two. Timeouts run on a
``task.Clock`` (``served(clock=...)``): the socket is real, the waiting is not.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest_twisted
import trustme
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.logger import LogLevel

from mcp_twisted import Context, MCPServer
from mcp_twisted.demo import server as demo_app
from mcp_twisted.jsonrpc import INTERNAL_ERROR
from mcp_twisted.metrics import Metrics
from mcp_twisted.protocol import SERVER_SHUTTING_DOWN
from mcp_twisted.service import MCPWebSocketService
from mcp_twisted.websocket import MCPServerFactory
from tests.support import (
    ProbeClient,
    RecordingEndpoint,
    connect,
    find,
    handshake,
    raw_response,
    run_timers_on,
    until,
)

KIB = 1024


async def greedy_client(factory: MCPServerFactory, port: int, tool: str, arguments: dict[str, Any],
                        **params: Any) -> tuple[ProbeClient, Any]:
    """A client that calls ``tool`` and stops reading; with the server's end of it.

    Both kernel buffers are shrunk, so the unread output backs up into the
    server's own buffer after kilobytes instead of megabytes.
    """
    greedy = await connect(port)
    await greedy.initialize()
    (server_side,) = factory.connections
    greedy.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)
    server_side.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KIB)
    greedy.transport.pauseProducing()
    greedy.send_json({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments, **params}})
    return greedy, server_side


async def polite_call(port: int) -> None:
    """A well-behaved client connects, initializes and gets an answer."""
    client = await connect(port)
    await client.initialize()
    reply = await client.request("polite", "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    assert reply["result"]["content"][0]["text"] == "hi"
    client.sendClose(1000)


def flood_app() -> MCPServer:
    app = MCPServer("flood")

    @app.tool()
    def echo(text: str) -> str:
        return text

    @app.tool()
    def spray(n: int, ctx: Context) -> int:
        """Reports progress n times without waiting for the client."""
        for i in range(1, n + 1):
            ctx.report_progress(i, n, "x" * 64)
        return n

    @app.tool()
    def blob(size: int) -> str:
        return "b" * size

    @app.tool()
    async def slow_blob(size: int) -> str:
        await task.deferLater(reactor, 0)
        return "b" * size

    return app


# 1. Output obeys backpressure.


@pytest_twisted.ensureDeferred
async def test_progress_flood_to_a_client_that_stops_reading_is_bounded(served):
    # Measured before: slow_count with a progress token and no delay grew the
    # server by ~45 MB/s for a client that did not read.
    factory, number, _ = await served(demo_app, max_output_buffer=256 * KIB)
    greedy, server_side = await greedy_client(factory, number, "slow_count", {"count": 10**7, "delay": 0},
                                              _meta={"progressToken": "p"})
    await until(lambda: server_side.paused and server_side._writable_waiters)
    peak = 0
    for _ in range(50):
        peak = max(peak, server_side.buffered_bytes())
        await task.deferLater(reactor, 0.01)
    # The handler waits for room: the buffer stays near Twisted's 64 KiB
    # high-water mark, far below the limit, and nothing is dropped.
    assert peak < 128 * KIB
    assert server_side._writable_waiters
    await polite_call(number)

    greedy.transport.resumeProducing()  # reading again: progress resumes, in order
    await until(lambda: len(greedy.messages) > 2000, timeout=20)
    greedy.send_json({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
    steps = [json.loads(p)["params"]["progress"] for p, _ in list(greedy.messages)]
    assert steps == list(range(1, len(steps) + 1))
    assert (await greedy.request("after", "ping"))["result"] == {}


@pytest_twisted.ensureDeferred
async def test_progress_from_a_handler_that_does_not_wait_is_dropped_over_the_limit(served, events):
    factory, number, _ = await served(flood_app(), max_output_buffer=64 * KIB)
    greedy, _ = await greedy_client(factory, number, "spray", {"n": 50_000}, _meta={"progressToken": 1})
    await until(lambda: find(events, "Dropped {count} progress"))
    await polite_call(number)
    greedy.transport.resumeProducing()
    await until(lambda: any(json.loads(p).get("id") == 1 for p, _ in greedy.messages))
    progress = [m for m in (json.loads(p) for p, _ in greedy.messages) if "method" in m]
    # ~100 bytes each: what fits in the limit went out, not 5 MB of them.
    assert 100 < len(progress) < 2000
    (answer,) = [m for m in (json.loads(p) for p, _ in greedy.messages) if m.get("id") == 1]
    assert answer["result"]["content"][0]["text"] == "50000"
    assert len(find(events, "Dropped {count} progress")) == 1  # once, not once per message


@pytest_twisted.ensureDeferred
async def test_a_client_over_the_output_limit_for_too_long_is_closed_1008(served, events):
    metrics, clock = Metrics(), task.Clock()
    factory, number, _ = await served(flood_app(), max_output_buffer=64 * KIB, output_stall_timeout=0.5,
                                      max_message_size=1 << 20, metrics=metrics, clock=clock)
    greedy, server_side = await greedy_client(factory, number, "blob", {"size": 512 * KIB})
    for i in (2, 3):
        greedy.send_json({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                          "params": {"name": "blob", "arguments": {"size": 512 * KIB}}})
    await until(lambda: server_side._stall is not None and server_side._stall.running)  # over the limit
    clock.advance(0.4)
    assert not find(events, "Closing {peer}: {size} bytes of output unread")
    clock.advance(0.1)
    (closing,) = find(events, "Closing {peer}: {size} bytes of output unread")
    clock.advance(1)  # the closing handshake's timeout: it does not read the close frame either
    await until(lambda: not factory.connections)
    assert closing["size"] > 64 * KIB
    assert metrics.output_stalls._value.get() == 1
    assert metrics.connections_closed.labels("1008")._value.get() == 1
    await polite_call(number)
    greedy.transport.abortConnection()  # it never reads, so it never noticed


# 2. The upgrade request is bounded before anything else runs.


class SlowHeader(protocol.Protocol):
    """Sends an upgrade request whose head never ends, a chunk at a time."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.sent = 0
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self.loop = task.LoopingCall(self.more)
        self.loop.start(0.002)

    def more(self) -> None:
        self.transport.write(self.chunk)
        self.sent += len(self.chunk)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        if self.loop.running:
            self.loop.stop()
        self.lost.callback(None)


async def slow_header(port: int, chunk: bytes) -> SlowHeader:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await endpoints.connectProtocol(endpoint, SlowHeader(chunk))


@pytest_twisted.ensureDeferred
async def test_endless_headers_get_431_once_over_the_limit_while_others_are_served(served, events):
    # Measured before: 32 endless headers held ~944 MB and a core for 5 s.
    _, number, _ = await served(flood_app(), max_header_bytes=8 * KIB)
    attackers = [await slow_header(number, b"X-Pad: " + b"a" * 500 + b"\r\n") for _ in range(32)]
    await polite_call(number)
    await defer.DeferredList([a.lost for a in attackers]).addTimeout(10, reactor)
    for attacker in attackers:
        assert attacker.received.startswith(b"HTTP/1.1 431 ")
        assert attacker.sent < 8 * KIB + 4 * 510  # refused at the limit, not read on
    assert len(find(events, "Refused {count} upgrade request(s) with an oversize head")) == 1


@pytest_twisted.ensureDeferred
async def test_too_many_header_lines_get_431(served):
    _, number, _ = await served(flood_app(), max_headers=20)
    many = {f"X-H{i}": "1" for i in range(30)}
    assert (await handshake(number, headers=many))[0] == 431
    few = {f"X-H{i}": "1" for i in range(10)}
    assert (await handshake(number, headers=few))[0] == 101
    one_big = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 20 * KIB + b"\r\n\r\n"
    assert (await raw_response(number, one_big)).startswith(b"HTTP/1.1 431 ")


# 3. Connection slots belong to real clients.


class Idle(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_idle_sockets_cannot_keep_real_clients_out(served, events):
    # Measured before: 200 idle TCP sockets got real clients 503 for 5 s at a time.
    factory, number, _ = await served(flood_app(), max_handshakes=8, max_connections=4)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", number)
    idle = [await endpoints.connectProtocol(endpoint, Idle()) for _ in range(40)]
    await until(lambda: sum(i.lost.called for i in idle) >= 32)
    assert len(factory.handshaking) <= 8
    await polite_call(number)
    assert len(find(events, "Dropped {count} connection(s) idle in the handshake")) == 1
    for i in idle:
        i.transport.abortConnection()
    # The cap counts sessions: four upgraded clients fill it, a fifth gets 503.
    sessions = [await connect(number) for _ in range(4)]
    assert (await handshake(number))[0] == 503
    sessions[0].sendClose(1000)
    await sessions[0].closed
    await until(lambda: len(factory.connections) == 3)
    await polite_call(number)


@pytest_twisted.ensureDeferred
async def test_a_session_that_never_initializes_is_closed_1008(served, events):
    clock = task.Clock()
    factory, number, _ = await served(flood_app(), init_timeout=0.5, clock=clock)
    lurker = await connect(number)  # connected, never initializes
    member = await connect(number)
    await member.initialize()
    await member.request("sync", "ping")  # notifications/initialized has arrived, too
    clock.advance(0.4)
    assert not find(events, "Closing {peer}: no MCP initialize")
    clock.advance(0.1)
    _, code, _ = await lurker.closed.addTimeout(5, reactor)
    assert code == 1008
    assert find(events, "Closing {peer}: no MCP initialize")
    clock.advance(10)  # long past the member's deadline too
    assert (await member.request("still", "ping"))["result"] == {}
    assert len(factory.connections) == 1


# 4. Message-level amplification is bounded.


@pytest_twisted.ensureDeferred
async def test_a_message_in_too_many_fragments_closes_1009(served):
    # Measured before: 47 MB of empty continuation frames became a 761 MB spike.
    _, number, _ = await served(flood_app(), max_fragments=100)
    fine = await connect(number)
    await fine.initialize()
    text = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}).encode()
    fine.beginMessage()
    for i in range(0, len(text), 5):
        fine.sendMessageFrame(text[i:i + 5])
    fine.endMessage()
    assert (await fine.next_message())["id"] == 7

    attacker = await connect(number)
    attacker.beginMessage()
    for _ in range(500):
        attacker.sendMessageFrame(b"")
    assert (await attacker.closed.addTimeout(5, reactor))[1] == 1009
    assert (await fine.request(8, "ping"))["result"] == {}


@pytest_twisted.ensureDeferred
async def test_a_huge_batch_of_list_requests_gets_one_error_while_others_are_served(served, events):
    # Measured before: a 2.1 MB batch of tools/list gave an 86.6 MB reply,
    # stalled every client for 0.74 s, then dropped the connection.
    _, number, _ = await served(demo_app, max_message_size=4 << 20)
    attacker = await connect(number)
    await attacker.initialize("2025-03-26")
    attacker.send_json([{"jsonrpc": "2.0", "id": i, "method": "tools/list"} for i in range(20_000)])
    await polite_call(number)
    reply = await attacker.next_message()
    assert reply["error"]["code"] == -32600 and reply["error"]["data"] == {"limit": 64}
    # Within the limits a batch is served as one array.
    attacker.send_json([{"jsonrpc": "2.0", "id": i, "method": "tools/list"} for i in range(64)])
    replies = await attacker.next_message()
    assert len(replies) == 64 and all("result" in r for r in replies)
    assert len(find(events, "Refused a batch")) == 1


# 5. An answer too large to send becomes an error answer.


@pytest_twisted.ensureDeferred
async def test_an_answer_over_the_message_limit_is_an_error_and_the_connection_goes_on(served):
    # Measured before: a synchronous handler's oversize answer dropped the
    # connection; an asynchronous one's was never answered.
    _, number, _ = await served(flood_app(), max_message_size=64 * KIB)
    client = await connect(number)
    await client.initialize()
    for request_id, tool in enumerate(("blob", "slow_blob")):
        reply = await client.request(request_id, "tools/call",
                                     {"name": tool, "arguments": {"size": 100 * KIB}})
        assert reply["error"]["code"] == INTERNAL_ERROR
        assert "too large" in reply["error"]["message"]
    reply = await client.request(9, "tools/call", {"name": "blob", "arguments": {"size": 10}})
    assert reply["result"]["content"][0]["text"] == "b" * 10


# 6. Shutdown answers every request.


@pytest_twisted.ensureDeferred
async def test_shutdown_answers_running_requests_then_closes_1001(events):
    # Measured before: 200 of 200 running calls got nothing.
    app = flood_app()
    gates: list[defer.Deferred[str]] = []

    @app.tool()
    async def hang() -> str:
        gates.append(defer.Deferred())
        return await gates[-1]

    metrics, clock = Metrics(), task.Clock()
    factory = MCPServerFactory(app, metrics=metrics, clock=clock)
    run_timers_on(factory, clock)
    listener = RecordingEndpoint()
    service = MCPWebSocketService(factory, [listener], drain_timeout=0.3, close_timeout=1)
    service.startService()
    client = await connect(listener.port)
    await client.initialize()
    deaf = await connect(listener.port)  # never reads again: the server must still record 1001
    await deaf.initialize()
    for i in range(20):
        client.send_json({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                          "params": {"name": "hang", "arguments": {}}})
    await until(lambda: len(gates) == 20)
    deaf.transport.pauseProducing()
    stopping = defer.ensureDeferred(service.stopService())
    await until(lambda: all(connection.session.draining for connection in factory.connections))
    clock.advance(0.29)
    assert sorted(connection.session.in_flight for connection in factory.connections) == [0, 20]
    clock.advance(0.01)  # the drain timeout: the running requests are answered, then 1001
    assert (await client.closed)[1] == 1001
    assert not stopping.called  # the deaf peer holds it up until the close timeout
    clock.advance(1)
    await stopping
    answers = [json.loads(p) for p, _ in client.messages]
    assert sorted(a["id"] for a in answers) == list(range(20))
    assert {a["error"]["code"] for a in answers} == {SERVER_SHUTTING_DOWN}
    # The deaf peer never answered the close: it was dropped, and the server
    # still records the code it sent.
    await until(lambda: metrics.connections_closed.labels("1001")._value.get() == 2)
    assert all(closed["code"] == 1001 for closed in find(events, "Closed"))
    deaf.transport.abortConnection()


# 9. Client mistakes are one clear line at info.


@pytest_twisted.ensureDeferred
async def test_plain_ws_to_a_tls_port_logs_a_hint_at_info(tmp_path, events):
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    endpoint = endpoints.serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}")
    factory = MCPServerFactory(flood_app())
    port = await endpoint.listen(factory)
    try:
        answer = await raw_response(port.getHost().port, b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer == b""
        await until(lambda: find(events, "{peer} sent plain HTTP to a TLS port"))
        (hint,) = find(events, "{peer} sent plain HTTP to a TLS port")
        assert hint["log_level"] == LogLevel.info
        assert not [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    finally:
        await port.stopListening()
