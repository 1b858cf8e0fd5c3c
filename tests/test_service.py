"""Graceful shutdown of the service over real sockets: 503 to newcomers for
the drain delay, drain, then 1001. The delay, the drain and close timeouts,
and the handlers' work, run on a ``task.Clock``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError

from mcp_twisted import MCPServer
from mcp_twisted.service import MCPWebSocketService
from mcp_twisted.websocket import MCPServerFactory
from tests.http_support import init_message, raw_request
from tests.support import (
    ProbeClient,
    RecordingEndpoint,
    connect,
    handshake,
    raw_response,
    run_timers_on,
    until,
)


class Shutdown:
    """A started service whose app's ``slow`` tool sleeps on the service's clock."""

    def __init__(self, drain_timeout: float) -> None:
        self.clock = task.Clock()
        self.running = 0
        self.cancelled = 0
        app = MCPServer("shutdown-test")
        app.add_tool(self.slow)
        factory = MCPServerFactory(app, clock=self.clock)
        run_timers_on(factory, self.clock)
        self.endpoint = RecordingEndpoint()
        self.service = MCPWebSocketService(factory, [self.endpoint], drain_timeout=drain_timeout,
                                           close_timeout=2.0)
        self.service.startService()

    async def slow(self, delay: float) -> str:
        self.running += 1
        try:
            await task.deferLater(self.clock, delay)
        except defer.CancelledError:
            self.cancelled += 1
            raise
        return f"slept {delay}"

    async def client_running_slow(self, delay: float) -> ProbeClient:
        """A client with a ``slow`` call running."""
        client = await connect(self.endpoint.port)
        await client.initialize()
        client.send_json({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "slow", "arguments": {"delay": delay}}})
        await until(lambda: self.running)
        return client

    async def stop(self) -> defer.Deferred[Any]:
        """Start stopping; returns once the sessions drain (listeners closed)."""
        stopping = defer.ensureDeferred(self.service.stopService())
        factory = self.service.factory
        assert factory.draining
        await until(lambda: all(c.session.draining for c in factory.connections))
        return stopping


@pytest_twisted.ensureDeferred
async def test_request_in_flight_at_shutdown_is_answered_then_1001():
    shutdown = Shutdown(drain_timeout=5.0)
    client = await shutdown.client_running_slow(0.3)
    stopping = await shutdown.stop()
    refused = await client.request(2, "tools/call", {"name": "slow", "arguments": {"delay": 0}})
    assert refused["error"]["code"] == -32003
    shutdown.clock.advance(0.3)
    answer = await client.next_message()
    assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == "slept 0.3"
    was_clean, code, _ = await client.closed
    assert (was_clean, code) == (True, 1001)
    await stopping
    assert shutdown.service.factory.connections == set()
    try:
        await connect(shutdown.endpoint.port)
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("the listener still accepts connections")


@pytest_twisted.ensureDeferred
async def test_drain_timeout_bounds_the_wait_and_cancels_stragglers():
    shutdown = Shutdown(drain_timeout=0.5)
    client = await shutdown.client_running_slow(60)
    stopping = await shutdown.stop()
    shutdown.clock.advance(0.4)
    assert shutdown.cancelled == 0 and not client.messages
    shutdown.clock.advance(0.1)  # the drain timeout: the straggler is cancelled and answered
    assert shutdown.cancelled == 1
    answer = await client.next_message()
    assert answer["id"] == 1 and answer["error"]["code"] == -32003
    assert (await client.closed)[1] == 1001
    await stopping


class Draining:
    """A started service with WebSocket and HTTP on one listener and a drain delay on a Clock."""

    def __init__(self, *, drain_delay: float, reuse_port: bool = False) -> None:
        from mcp_twisted.http import MCPHTTPResource

        self.clock = task.Clock()
        app = MCPServer("drain-test")
        app.add_tool(lambda: "pong", name="ping")
        factory = MCPServerFactory(app, clock=self.clock)
        run_timers_on(factory, self.clock)
        self.endpoint = RecordingEndpoint()
        self.service = MCPWebSocketService(
            factory, [self.endpoint], http=MCPHTTPResource(factory.host), drain_delay=drain_delay,
            reuse_port=reuse_port)
        self.service.startService()

    async def healthz(self) -> bytes:
        return await raw_response(self.endpoint.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_drain_delay_says_503_to_newcomers_and_serves_live_sessions_until_it_ends():
    draining = Draining(drain_delay=5.0)
    assert (await draining.healthz()).startswith(b"HTTP/1.1 200")
    client = await connect(draining.endpoint.port)
    await client.initialize()
    stopping = defer.ensureDeferred(draining.service.stopService())
    # At once: the health check and new sessions (upgrade or HTTP initialize) get 503.
    assert (await draining.healthz()).startswith(b"HTTP/1.1 503")
    assert (await handshake(draining.endpoint.port))[0] == 503
    initialize = raw_request("POST", host="127.0.0.1", body=json.dumps(init_message()).encode(), headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    assert (await raw_response(draining.endpoint.port, initialize)).startswith(b"HTTP/1.1 503")
    # The live session is served as before, for the whole delay.
    draining.clock.advance(4.9)
    reply = await client.request(2, "tools/call", {"name": "ping", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == "pong"
    assert not client.closed.called
    draining.clock.advance(0.1)
    assert (await client.closed)[:2] == (True, 1001)
    await stopping


@pytest_twisted.ensureDeferred
async def test_reuse_port_listeners_close_when_the_drain_starts():
    """The kernel then gives new connections to the other processes on the port."""
    draining = Draining(drain_delay=5.0, reuse_port=True)
    client = await connect(draining.endpoint.port)
    await client.initialize()
    stopping = defer.ensureDeferred(draining.service.stopService())
    await until(lambda: not draining.service.listeners.running)
    with pytest.raises(ConnectionRefusedError):
        await connect(draining.endpoint.port)
    reply = await client.request(2, "tools/call", {"name": "ping", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == "pong"
    draining.clock.advance(5)
    assert (await client.closed)[1] == 1001
    await stopping
