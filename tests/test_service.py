"""Graceful shutdown of the service over real sockets: drain, then 1001. The
drain and close timeouts, and the handlers' work, run on a ``task.Clock``."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError

from mcp_twisted import MCPServer
from mcp_twisted.service import MCPWebSocketService
from mcp_twisted.websocket import MCPServerFactory
from tests.support import ProbeClient, RecordingEndpoint, connect, run_timers_on, until


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
