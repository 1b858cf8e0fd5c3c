"""Graceful shutdown of the service over real sockets: drain, then 1001."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError

from mcp_twisted import MCPServer
from mcp_twisted.service import MCPWebSocketService
from mcp_twisted.websocket import MCPServerFactory
from tests.support import RecordingEndpoint, connect


def make_service(drain_timeout: float) -> tuple[MCPWebSocketService, RecordingEndpoint, dict[str, Any]]:
    app = MCPServer("shutdown-test")
    seen: dict[str, Any] = {"cancelled": 0}

    @app.tool()
    async def slow(delay: float) -> str:
        try:
            await task.deferLater(reactor, delay)
        except defer.CancelledError:
            seen["cancelled"] += 1
            raise
        return f"slept {delay}"

    endpoint = RecordingEndpoint()
    service = MCPWebSocketService(MCPServerFactory(app), [endpoint], drain_timeout=drain_timeout,
                                  close_timeout=2.0)
    service.startService()
    return service, endpoint, seen


def call(client: Any, request_id: int, delay: float) -> None:
    client.send_json({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                      "params": {"name": "slow", "arguments": {"delay": delay}}})


@pytest_twisted.ensureDeferred
async def test_request_in_flight_at_shutdown_is_answered_then_1001():
    service, endpoint, _ = make_service(drain_timeout=5.0)
    client = await connect(endpoint.port)
    await client.initialize()
    call(client, 1, 0.3)
    await task.deferLater(reactor, 0.05)
    stopping = defer.ensureDeferred(service.stopService())
    await task.deferLater(reactor, 0.05)
    assert service.factory.draining
    refused = await client.request(2, "tools/call", {"name": "slow", "arguments": {"delay": 0}})
    assert refused["error"]["code"] == -32003
    answer = await client.next_message()
    assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == "slept 0.3"
    was_clean, code, _ = await client.closed
    assert (was_clean, code) == (True, 1001)
    await stopping
    assert service.factory.connections == set()
    try:
        await connect(endpoint.port)
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("the listener still accepts connections")


@pytest_twisted.ensureDeferred
async def test_drain_timeout_bounds_the_wait_and_cancels_stragglers():
    service, endpoint, seen = make_service(drain_timeout=0.5)
    client = await connect(endpoint.port)
    await client.initialize()
    call(client, 1, 60)
    await task.deferLater(reactor, 0.05)
    started = reactor.seconds()
    await service.stopService()
    elapsed = reactor.seconds() - started
    assert (await client.closed)[1] == 1001
    assert seen["cancelled"] == 1
    assert 0.5 <= elapsed < 5  # bounded by drain (0.5 s) + close (2 s) timeouts
