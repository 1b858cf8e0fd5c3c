"""The idle timeout of an HTTP connection (``MCPSite(timeout=...)``, 60 s by
default), in memory on a ``task.Clock``: counted from the end of the last
request or from the last bytes received, never while a request is handled,
and no timer left behind by a connection that is gone. (``_Channel`` keeps
one timer with a deadline instead of Twisted's cancel and new call around
each request; these pass on either.)"""

from __future__ import annotations

import json
from typing import Any

from mcp_twisted.protocol import LATEST_PROTOCOL_VERSION
from tests.http_support import JSON_HEADERS, Served, Wire, call, raw_request
from tests.support import make_app

PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}


def served() -> tuple[Served, str]:
    app, _ = make_app("idle-app")
    server = Served(app)
    return server, server.initialize()


def post(wire: Wire, session: str, body: Any = PING) -> None:
    wire.send(raw_request("POST", "/mcp", {**JSON_HEADERS, "Mcp-Session-Id": session,
                                           "MCP-Protocol-Version": LATEST_PROTOCOL_VERSION},
                          json.dumps(body).encode()))


def test_a_connection_closes_a_timeout_after_its_last_request_ended():
    server, session = served()
    wire = server.open()
    server.clock.advance(50)
    post(wire, session)
    assert wire.reply.status == 200
    server.clock.advance(59)
    post(wire, session)  # a second request on the connection starts the count again
    assert wire.replies()[-1].status == 200
    server.clock.advance(59.5)
    assert not wire.transport.disconnecting
    server.clock.advance(0.5)
    assert wire.transport.disconnecting


def test_bytes_of_an_unfinished_head_count_as_activity():
    server, _ = served()
    wire = server.open()
    server.clock.advance(40)
    wire.send(b"POST /mcp HTTP/1.1\r\n")
    server.clock.advance(59)
    wire.send(b"Host: 127.0.0.1:8080\r\n")
    server.clock.advance(59)
    assert not wire.transport.disconnecting
    server.clock.advance(1)
    assert wire.transport.disconnecting


def test_a_request_being_handled_is_never_timed_out_and_the_count_starts_when_it_ends():
    server, session = served()
    wire = server.request("GET", session=session, version=LATEST_PROTOCOL_VERSION)  # the session's stream
    assert wire.reply.status == 200 and not wire.reply.complete
    server.clock.advance(3600)
    assert not wire.transport.disconnecting
    assert server.request("DELETE", session=session).reply.status == 204  # ends the stream
    assert wire.reply.complete
    server.clock.advance(59)
    assert not wire.transport.disconnecting
    server.clock.advance(1)
    assert wire.transport.disconnecting


def test_a_shorter_timeout_set_later_applies_at_once():
    server, _ = served()
    wire = server.open()
    wire.protocol.setTimeout(5)
    server.clock.advance(4.9)
    assert not wire.transport.disconnecting
    server.clock.advance(0.1)
    assert wire.transport.disconnecting


def test_a_connection_that_is_gone_leaves_no_timer():
    server, session = served()
    before = len(server.clock.getDelayedCalls())
    wire = server.open()
    post(wire, session, call(8, "echo", {"text": "x"}))
    assert len(server.clock.getDelayedCalls()) == before + 1  # its idle timer
    wire.drop()
    assert len(server.clock.getDelayedCalls()) == before
