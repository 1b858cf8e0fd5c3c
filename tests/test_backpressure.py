"""A client that sends but does not read cannot grow the server's memory."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor, task

from mcp_twisted import MCPServer
from mcp_twisted.websocket import MCPServerFactory
from tests.support import connect, listen, stop, until

RESPONSE_SIZE = 64 * 1024
REQUESTS = 400  # 25 MiB of answers if nothing held them back


@pytest_twisted.ensureDeferred
async def test_non_reading_client_is_paused_and_others_are_served():
    app = MCPServer("backpressure")

    @app.tool()
    def blob(size: int) -> str:
        return "x" * size

    factory = MCPServerFactory(app, max_message_size=1 << 20)
    port = await listen(factory)
    try:
        number = port.getHost().port
        greedy = await connect(number)
        await greedy.initialize()
        (server_side,) = factory.connections
        greedy.transport.pauseProducing()  # stop reading answers
        for i in range(REQUESTS):
            greedy.send_json({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                              "params": {"name": "blob", "arguments": {"size": RESPONSE_SIZE}}})
        await until(lambda: server_side.paused)
        peak = 0
        for _ in range(25):
            peak = max(peak, server_side.buffered_bytes())
            await task.deferLater(reactor, 0.02)
        # Bounded by the high-water mark plus an answer or two, not 25 MiB.
        assert server_side.paused
        assert peak < 4 * RESPONSE_SIZE

        polite = await connect(number)
        await polite.initialize()
        reply = await polite.request(1, "tools/call", {"name": "blob", "arguments": {"size": 10}})
        assert reply["result"]["content"][0]["text"] == "x" * 10

        greedy.transport.resumeProducing()  # read again: every answer arrives, once
        await until(lambda: len(greedy.messages) >= REQUESTS, timeout=60)
        ids = sorted(json.loads(payload)["id"] for payload, _ in greedy.messages)
        assert ids == list(range(REQUESTS))
        assert not server_side.paused
    finally:
        await stop(port, factory)
