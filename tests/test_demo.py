"""The demo app's slow_count: progress, cancellation, and no blocking of other requests."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, task

from mcp_twisted.demo import server as demo_app
from mcp_twisted.websocket import MCPServerFactory
from tests.support import connect, listen, stop


@pytest_twisted.ensureDeferred
async def test_slow_count_reports_progress_stops_on_cancel_and_blocks_nothing():
    factory = MCPServerFactory(demo_app)
    port = await listen(factory)
    try:
        client = await connect(port.getHost().port)
        await client.initialize()
        client.send_json({"jsonrpc": "2.0", "id": "slow", "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"count": 100, "delay": 0.02},
            "_meta": {"progressToken": "p"}}})
        # Other requests are answered while slow_count runs.
        reply = await client.request("echo", "tools/call", {"name": "echo", "arguments": {"text": "now"}})
        assert reply["result"]["content"][0]["text"] == "now"
        first = await client.next_message()
        assert first["method"] == "notifications/progress"
        assert first["params"]["progressToken"] == "p" and first["params"]["total"] == 100
        client.send_json({"jsonrpc": "2.0", "method": "notifications/cancelled",
                          "params": {"requestId": "slow", "reason": "enough"}})
        await task.deferLater(reactor, 0.3)  # long enough for 15 more steps had it kept going
        client.messages.clear()
        await task.deferLater(reactor, 0.2)
        assert client.messages == []  # no more progress, and no answer to the cancelled call
        (connection,) = factory.connections
        assert connection.session.in_flight == 0
    finally:
        await stop(port, factory)
