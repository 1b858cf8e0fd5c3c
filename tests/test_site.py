"""WebSocket through the shared site (MCPSite): the upgraded connection is
the WebSocket protocol's own, backpressure included, with no error logged."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.logger import LogLevel

from tests.http_support import serve
from tests.support import connect, make_app


@pytest_twisted.ensureDeferred
async def test_a_websocket_upgraded_from_http_owns_its_connection(events):
    app, _ = make_app()
    factory, _, port = await serve(app)
    try:
        client = await connect(port.getHost().port)
        await client.initialize()
        (server_side,) = factory.connections
        # The HTTP channel that read the upgrade request let go of the transport.
        assert server_side.transport.producer is server_side
        client.send_json({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"text": "over the site"}}})
        reply = await client.next_message()
        assert reply["result"]["content"][0]["text"] == "over the site"
        failures = [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
        assert not failures, json.dumps([str(e.get("log_format")) for e in failures])
    finally:
        for connection in list(factory.connections):
            connection.dropConnection(abort=True)
        await port.stopListening()
